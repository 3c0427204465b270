"""The standing reliability suite: fuzzing every RPC, overload logging, reflection, damaged files.

Everything runs on loopback against the tiny index. ``make test`` fuzzes a few hundred requests;
the ``slow`` marker fuzzes 2,000 (``eval/fuzz_service.py`` measures memory over more).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
from tracer.cli.main import main
from tracer.service import ServiceConfig, create_server
from tracer.service import fuzz
from tracer.service.convert import redact_paths


class _Server:
    def __init__(self, tracers: dict[str, Any], **cfg: Any) -> None:
        self.cfg = ServiceConfig(port=0, **cfg)
        self.srv, port = create_server(self.cfg, tracers)
        self.srv.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def healthy(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()
        self.srv.stop(0).wait(5)


@pytest.fixture(scope="module")
def real(tiny_index: Path) -> Iterator[tuple[_Server, Any]]:
    from tracer.tracer import Tracer

    t = Tracer.open(tiny_index)
    t.warm()
    s = _Server({tiny_index.name: t}, grace_s=1.0)
    yield s, t
    s.close()


def _fuzz(real: tuple[_Server, Any], n: int, seed: int) -> fuzz.FuzzStats:
    s, t = real
    fz = fuzz.RequestFuzzer(seed, [t.name], t.store.doc_ids[:50])
    stats = fuzz.run(s.channel, fz, n)
    assert not stats.violations, "\n".join(stats.violations[:10])
    assert s.healthy()
    assert set(stats.by_rpc) == {m.name for m in fuzz.SERVICE.methods}  # every RPC was exercised
    return stats


def test_fuzz_every_rpc_no_unknown_no_internal(real: tuple[_Server, Any]) -> None:
    stats = _fuzz(real, 300, seed=0)
    # the fuzzer reaches past validation: some calls succeed and some are refused for their content
    assert stats.codes["OK"] > 10 and stats.codes["INVALID_ARGUMENT"] > 10, stats.codes


@pytest.mark.slow
def test_fuzz_2000_requests(real: tuple[_Server, Any]) -> None:
    stats = _fuzz(real, 2000, seed=1)
    assert stats.total == 2000


def test_the_contract_flags_what_it_should() -> None:
    good = fuzz.FuzzCall("Trace", False, pb.TraceRequest(), 1.0, well_formed=True)
    raw = fuzz.FuzzCall("Trace", False, b"\xff", 1.0, well_formed=False)
    assert not fuzz.allowed(good, grpc.StatusCode.INTERNAL) and not fuzz.allowed(good, grpc.StatusCode.UNKNOWN)
    assert fuzz.allowed(raw, grpc.StatusCode.INTERNAL) and not fuzz.allowed(raw, grpc.StatusCode.UNKNOWN)
    assert fuzz.allowed(good, grpc.StatusCode.INVALID_ARGUMENT)
    a = [fuzz.RequestFuzzer(7, ["i"]).call() for _ in range(20)]
    b = [fuzz.RequestFuzzer(7, ["i"]).call() for _ in range(20)]
    assert [(c.rpc, c.request) for c in a] == [(c.rpc, c.request) for c in b]  # seeded


def test_malformed_reflection_streams_leave_the_server_answering() -> None:
    """D3's trigger (garbage on reflection's client stream) ends every stream and harms nothing;
    that the process still exits in bounded time afterwards is test_service's stuck-handler test."""
    from tests.test_service import FakeTracer

    s = _Server({"tiny": FakeTracer()}, grace_s=0.5)
    try:
        assert fuzz.malformed_reflection_streams(s.channel, 20, seed=3) == 20
        assert s.healthy()
        stub = pb_grpc.TracerServiceStub(s.channel)
        assert stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5).hits
    finally:
        s.close()


# ----------------------------------------------------------------------------- surface
def test_no_reflection_flag_and_reflection_behind_the_token() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from tests.test_service import FakeTracer

    req = reflection_pb2.ServerReflectionRequest(list_services="")
    for cfg, code in (({"reflection": False}, grpc.StatusCode.UNIMPLEMENTED),
                      ({"auth_token": "s3cret"}, grpc.StatusCode.UNAUTHENTICATED)):
        s = _Server({"tiny": FakeTracer()}, **cfg)
        try:
            stub = reflection_pb2_grpc.ServerReflectionStub(s.channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerReflectionInfo(iter([req]), timeout=5))
            assert info.value.code() == code, cfg
            assert s.healthy()  # health needs neither
        finally:
            s.close()
    from tracer.cli.cmd_serve import register  # the CLI flag reaches the config
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["serve", "--no-reflection"]).reflection is False
    assert parser.parse_args(["serve"]).reflection is True


def test_overload_rejections_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_service import FakeTracer

    fake = FakeTracer(thread_safe=True)
    s = _Server({"tiny": fake}, max_concurrent_rpcs=2, max_workers=4)
    stub = pb_grpc.TracerServiceStub(s.channel)
    busy = [stub.Trace.future(pb.TraceRequest(prompt="block", target="t"), timeout=10) for _ in range(2)]
    try:
        assert fake.entered.acquire(timeout=5) and fake.entered.acquire(timeout=5)
        with caplog.at_level(logging.WARNING, logger="tracer.service.server"):
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        lines = [r for r in caplog.records if "RESOURCE_EXHAUSTED" in r.getMessage()]
        assert len(lines) == 1  # rate-limited: one line a second, counting the rest
        assert json.loads(lines[0].getMessage().split(" ", 1)[1])["rpc"] == "Trace"
    finally:
        fake.release.set()
        for f in busy:
            f.result()
        s.close()


def test_index_info_hides_server_paths(real: tuple[_Server, Any]) -> None:
    s, t = real
    info = pb_grpc.TracerServiceStub(s.channel).GetIndex(pb.GetIndexRequest(index=t.name), timeout=5).index
    text = info.info_json
    for ck in t.info()["checkpoints"]:
        assert ck["path"].startswith("/") and ck["path"] not in text and Path(ck["path"]).name in text
    assert json.loads(text) == json.loads(json.dumps(redact_paths(t.info()), default=str, sort_keys=True))


# ----------------------------------------------------------------------------- damaged files x entry points
DAMAGES = ("truncate", "flip_header", "flip_data", "delete", "symlink", "edit_manifest")


def _damage(index: Path, how: str, outside: Path) -> None:
    f = index / "features" / "raw" / "ckpt0.npy"
    if how == "truncate":
        f.write_bytes(f.read_bytes()[:-17])
    elif how in ("flip_header", "flip_data"):
        data = bytearray(f.read_bytes())
        for i in (range(2, 12) if how == "flip_header" else range(len(data) - 40, len(data) - 30)):
            data[i] ^= 0xFF
        f.write_bytes(bytes(data))
    elif how == "delete":
        f.unlink()
    elif how == "symlink":
        shutil.copy(f, outside)
        f.unlink()
        f.symlink_to(outside)
    else:
        m = json.loads((index / "manifest.json").read_text())
        m["checkpoints"][0]["lr"] *= 1000
        (index / "manifest.json").write_text(json.dumps(m))


ENTRY_POINTS = {
    "info": lambda d, q: ["info", str(d), "--verify"],
    "query": lambda d, q: ["query", "--index-dir", str(d), "--verify", "--prompt", q.prompt, "--target", q.target],
    "serve": lambda d, q: ["serve", "--index", str(d), "--verify", "--port", "0", "--grace", "0"],
}


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_file_matrix_one_line_refusals(how, tmp_path, tiny_index, tiny_bench, capsys):
    """Every damage x {info, query, serve} with --verify: exit 2 and one line on stderr, never a traceback."""
    index = tmp_path / tiny_index.name
    shutil.copytree(tiny_index, index)
    _damage(index, how, tmp_path / "outside.npy")
    q = tiny_bench.queries[0]
    for entry, argv in ENTRY_POINTS.items():
        code = main(argv(index, q))
        captured = capsys.readouterr()
        err_lines = [ln for ln in captured.err.splitlines() if ln.startswith("tracer ")]
        assert code == 2, (how, entry, captured.err[-2000:])
        assert len(err_lines) == 1 and "error:" in err_lines[0], (how, entry, captured.err[-2000:])
        assert "Traceback" not in captured.err and "Traceback" not in captured.out, (how, entry)
        assert not captured.out.strip().startswith("tracer serving"), (how, entry)  # never served


def test_query_verify_needs_an_index_dir(capsys) -> None:
    assert main(["query", "--server", "127.0.0.1:1", "--verify", "--prompt", "p", "--target", " t"]) == 2
    assert "--verify checks an index directory" in capsys.readouterr().err


def test_concurrent_fuzz_keeps_the_server_up(real: tuple[_Server, Any]) -> None:
    """Four clients fuzzing at once (different seeds): the contract holds under concurrency too."""
    s, t = real
    results: list[fuzz.FuzzStats] = []

    def worker(seed: int) -> None:
        results.append(fuzz.run(s.channel, fuzz.RequestFuzzer(seed, [t.name], t.store.doc_ids[:50]), 40))

    threads = [threading.Thread(target=worker, args=(100 + i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(results) == 4 and not any(r.violations for r in results), [r.violations[:3] for r in results]
    assert s.healthy()
