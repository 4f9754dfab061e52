from wssfleet.cli import main

raise SystemExit(main())
