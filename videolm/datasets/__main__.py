"""``python -m videolm.datasets OUT``: write the synthetic demo set."""

from videolm.datasets.synthetic import main

raise SystemExit(main())
