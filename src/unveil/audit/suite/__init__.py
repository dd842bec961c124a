"""The audit tests, one module each. Importing this package imports every module in it, and each module registers
its test (:func:`unveil.audit.protocol.register`), so adding a test is adding a module here (and its test in
tests/); `audit()` runs them in their ``order``. This is the naming-convention plugin discovery of the Python
Packaging User Guide ("Creating and discovering plugins": ``pkgutil.iter_modules`` over a package's path).
The order they run in: :func:`unveil.audit.protocol.registered` (tests/test_audit_protocol.py holds it).
"""

import importlib
import pkgutil

for _module in sorted(found.name for found in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
