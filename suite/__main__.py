from modbench.suite.cli import main

raise SystemExit(main())
