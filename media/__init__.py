"""The media core: G.711, resampling, playout and VAD over numpy arrays. Pure code, no I/O.

Importing it pins numpy's BLAS to one thread unless the environment already says otherwise.
The media core's matrix products are small and run once per 20 ms frame on threads that must
not wait; a multi-threaded OpenBLAS splits them across cores and leaves its helper threads
spinning between frames, which costs several times the work itself in CPU. The setting is
read when numpy loads, so the processes' entry packages (``daemon``, ``sip``) import this
package before anything that loads numpy.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
