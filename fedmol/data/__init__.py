"""Data: the dataset registry, file sources with checksums, the OGB-compatible featurizer,
scaffold partitioning across simulated partners, and frozen split files.

Flow: ``registry`` (what a dataset is) -> ``sources`` (find / verify / download its file) ->
``featurize`` (SMILES -> graph arrays) -> ``dataset`` (cached ``MoleculeDataset``) ->
``scaffold`` + ``partition`` (deal scaffolds to partners) -> ``splits`` (frozen JSON files).
"""
