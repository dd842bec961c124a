"""The audit tests, one module each. Importing this package imports every module in it, and each module registers
its test (:func:`unveil.audit.protocol.register`), so adding a test is adding a module here (and its test in
tests/); `audit()` runs them in their ``order``. This is the naming-convention plugin discovery of the Python
Packaging User Guide ("Creating and discovering plugins": ``pkgutil.iter_modules`` over a package's path).

The built-in tests, in order: feature map (100), source probes (200), lung occlusion (300), transfer (400),
metadata (500), contamination (600), acquisition fingerprint (700), source discovery (800), saliency in lungs
(900), infection saliency (1000).
"""

import importlib
import pkgutil

for _module in sorted(found.name for found in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
