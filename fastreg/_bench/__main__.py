import sys

from fastreg._bench import main

sys.exit(main())
