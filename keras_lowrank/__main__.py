import sys

from keras_lowrank.cli import main

sys.exit(main())
