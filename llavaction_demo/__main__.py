"""python -m llavaction_demo: the same command as llavaction-demo."""
import sys

from llavaction_demo.run import console_main

if __name__ == "__main__":
    sys.exit(console_main())
