"""`python -m handwriting_ai.worker`: see `handwriting_ai.worker.main`."""

import sys

from handwriting_ai.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
