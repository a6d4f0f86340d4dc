from unlearnbench.cli.main import main

raise SystemExit(main())
