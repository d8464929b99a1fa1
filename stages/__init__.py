"""The course: one training program per stage, each differing from the previous by one idea."""
