"""Static files: ``StaticFiles``, a native handler serving one directory, and
``python -m trioserve.static``, the ``python -m http.server`` replacement.
See docs/static-files.md."""

from ._files import StaticFiles as StaticFiles
