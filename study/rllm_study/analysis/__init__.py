"""Analysis: pure functions of recorded results folders: the metric registry (`metrics`), intervals
and tests (`stats`), and grading recorded output again (`regrade`)."""
