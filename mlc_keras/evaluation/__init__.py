"""What evaluate shows rather than counts: the pictures it writes into a run
folder (plots: training curves, confusion matrices, tag heads' precision-
recall curves). The numbers stay in scoring.py and evaluate_lib.py."""
