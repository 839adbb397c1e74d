#!/usr/bin/env python
"""`python evaluation/compare.py --help` (run from code/); the report itself is evaluation/reports/compare.py."""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # code/, not this folder
from evaluation.reports.compare import main  # noqa: E402

sys.exit(main())
