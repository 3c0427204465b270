from tracer.cli.main import main

raise SystemExit(main())
