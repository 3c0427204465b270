// Independent client of tracer.v1 (grpc-js + proto-loader, straight from proto/): calls Health.Check and Trace.
// Usage: node client.js HOST:PORT PROMPT TARGET K  -> prints {"health": ..., "trace": TraceResponse} as JSON.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const LOAD_OPTIONS = { keepCase: true, enums: String, longs: String, defaults: true, oneofs: true };
const DEADLINE_MS = 10000;

function load(file, includeDir) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...LOAD_OPTIONS, includeDirs: [includeDir] }));
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + DEADLINE_MS) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function main() {
  const [address, prompt, target, k] = process.argv.slice(2);
  const protoRoot = path.resolve(__dirname, '..', '..', 'proto');
  const tracer = load('tracer/v1/tracer.proto', protoRoot).tracer.v1;
  const health = load('health.proto', __dirname).grpc.health.v1;
  const creds = grpc.credentials.createInsecure();
  const healthClient = new health.Health(address, creds);
  const tracerClient = new tracer.TracerService(address, creds);
  const status = await call(healthClient, 'Check', { service: '' });
  const trace = await call(tracerClient, 'Trace', { prompt, target, top_k: Number(k), method: 'METHOD_UNSPECIFIED' });
  process.stdout.write(JSON.stringify({ health: status.status, trace }) + '\n');
  healthClient.close();
  tracerClient.close();
}

main().catch((err) => {
  process.stderr.write(`${err.code} ${err.details || err.message}\n`);
  process.exit(1);
});
