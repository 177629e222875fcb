"""The small molecules the model tests build batches from (a plain module: ``from conftest import``
would pick whichever folder's conftest was imported last)."""

SMILES = [
    "CCO",
    "c1ccccc1O",
    "CC(=O)Nc1ccc(O)cc1",
    "C",  # one atom, no bonds
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "[NH3+]CC(=O)[O-]",
    "C1CC2CCC1C2",
    "ClC(Cl)(Cl)Br",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "O=C1CCCN1",
    "c1ccc2c(c1)ccc1ccccc12",
    "CC#N",
]
