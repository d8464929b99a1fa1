"""python -m common.tools.exercises exercise|check|solution STAGE"""
import sys

from common.tools.exercises.report import main

sys.exit(main())
