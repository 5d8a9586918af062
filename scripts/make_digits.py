"""Write compress/data/digits.npz, the demo's dataset, from scikit-learn's bundled copy of the UCI digits.

1797 grey-scale 8×8 handwritten digits with values 0..16, stored as uint8 ``x`` [N, 8, 8] and int64 ``y`` [N]
(about 20 kB compressed). scikit-learn is needed only to run this script, not to use the package:

    python scripts/make_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "compress" / "data" / "digits.npz"


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.uint8)  # values are the integers 0..16
    if not np.array_equal(x, digits.images):
        raise SystemExit("unexpected non-integer pixel values in sklearn's digits")
    y = digits.target.astype(np.int64)
    np.savez_compressed(OUT, x=x, y=y)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): x {x.shape} {x.dtype}, y {y.shape}, classes {np.bincount(y)}")


if __name__ == "__main__":
    main()
