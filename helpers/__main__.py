"""``python -m helpers fetch`` fills the data cache; ``python -m helpers where`` prints the
data file the notebooks will use. (See :mod:`helpers.data` for the resolution order.)"""

from .data import main

raise SystemExit(main())
