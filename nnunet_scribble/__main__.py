from nnunet_scribble.cli import main

raise SystemExit(main())
