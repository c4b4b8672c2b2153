from clipbert.cli import main

raise SystemExit(main())
