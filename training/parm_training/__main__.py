from parm_training.cli import main

raise SystemExit(main())
