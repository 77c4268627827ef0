"""What a feature cache says about its images: near-duplicates (and leaks across the split),
likely label errors, outliers and class balance (`audit`), and the nearest cached images to
new ones (`similar`).

Modules, one job each: `space` (the cosine space every comparison uses), `index` (the faiss
index kept beside a cache), `duplicates`, `labels` (confident learning on our own out-of-fold
probabilities), `outliers`, `exclude` (the exclude list `extract` and `fit` read), `report`
(the HTML page) and `run` (the `audit` command's stage function). Importing this package is
cheap; faiss and cleanlab (the `audit` extra) are imported by the functions that use them.
"""
