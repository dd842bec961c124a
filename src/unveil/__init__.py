"""unveil: chest X-ray classifiers that are honest about small, biased data.

Implements Tartaglione et al., "Unveiling COVID-19 from Chest X-ray with deep learning:
a hurdles race with small data" (2020), in layers: data sources -> preprocessing -> models ->
training -> evaluation -> audit -> reports -> CLI. Every layer is usable from Python.
"""

__version__ = "0.1.0"
