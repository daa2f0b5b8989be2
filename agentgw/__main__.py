from agentgw.cli import main

raise SystemExit(main())
