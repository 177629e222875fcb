"""The dataset registry: one table that says what every built-in dataset is.

Like ``ogb/graphproppred/master.csv``, one row per dataset: where its file comes from (canonical
URL, or a file shipped inside a PyPI package), the sha256 of the file's bytes as fedmol reads it
(uncompressed), which column holds the SMILES, which columns are tasks, the task type and the
metric MoleculeNet / OGB recommend (ROC-AUC for classification, RMSE for regression), and the
row count of the raw table. A partner's own CSV becomes a :class:`DatasetInfo` the same way,
through :func:`csv_info`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedmol.errors import DataError

MOLECULENET_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"

TASK_TYPES = ("classification", "regression")
METRIC_FOR_TASK = {"classification": "rocauc", "regression": "rmse"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One registry row. ``file`` is the local file name; ``url`` where it is downloaded from
    (``.gz`` URLs are decompressed); ``package`` names a PyPI package that ships the file
    instead (no download needed)."""

    name: str
    file: str
    url: str | None
    sha256: str | None
    smiles_col: str
    tasks: tuple[str, ...]
    task_type: str
    metric: str
    rows: int | None
    sep: str = ","
    package: str | None = None
    label_map: dict[str, float] | None = None
    description: str = ""

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def is_custom(self) -> bool:
        return self.name.startswith("csv:")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return d


#: MoleculeACE 3.0.0's wheel on PyPI (MIT licence): read as a zip archive, never installed (fedmol.data.moleculeace)
_MOLECULEACE_WHEEL = "MoleculeACE-3.0.0-py3-none-any.whl"
_PYPI_FILES = "https://files.pythonhosted.org/packages/fb/06/3bbb140a8bb29e099a67b2f4b34b8d6dce3f41a684ca4c988c88a24ef28c/"
_MOLECULEACE_TARGETS = (
    "CHEMBL1862_Ki", "CHEMBL1871_Ki", "CHEMBL2034_Ki", "CHEMBL2047_EC50", "CHEMBL204_Ki", "CHEMBL2147_Ki",
    "CHEMBL214_Ki", "CHEMBL218_EC50", "CHEMBL219_Ki", "CHEMBL228_Ki", "CHEMBL231_Ki", "CHEMBL233_Ki",
    "CHEMBL234_Ki", "CHEMBL235_EC50", "CHEMBL236_Ki", "CHEMBL237_EC50", "CHEMBL237_Ki", "CHEMBL238_Ki",
    "CHEMBL239_EC50", "CHEMBL244_Ki", "CHEMBL262_Ki", "CHEMBL264_Ki", "CHEMBL2835_Ki", "CHEMBL287_Ki",
    "CHEMBL2971_Ki", "CHEMBL3979_EC50", "CHEMBL4005_Ki", "CHEMBL4203_Ki", "CHEMBL4616_EC50", "CHEMBL4792_Ki",
)


def _moleculenet(name, file, gz, sha, smiles, tasks, task_type, rows, description):
    url = MOLECULENET_URL + file + (".gz" if gz else "")
    return DatasetInfo(name=name, file=file, url=url, sha256=sha, smiles_col=smiles, tasks=tuple(tasks),
                       task_type=task_type, metric=METRIC_FOR_TASK[task_type], rows=rows,
                       description=description)


SIDER_TASKS = (
    "Hepatobiliary disorders", "Metabolism and nutrition disorders", "Product issues", "Eye disorders",
    "Investigations", "Musculoskeletal and connective tissue disorders", "Gastrointestinal disorders",
    "Social circumstances", "Immune system disorders", "Reproductive system and breast disorders",
    "Neoplasms benign, malignant and unspecified (incl cysts and polyps)",
    "General disorders and administration site conditions", "Endocrine disorders",
    "Surgical and medical procedures", "Vascular disorders", "Blood and lymphatic system disorders",
    "Skin and subcutaneous tissue disorders", "Congenital, familial and genetic disorders",
    "Infections and infestations", "Respiratory, thoracic and mediastinal disorders", "Psychiatric disorders",
    "Renal and urinary disorders", "Pregnancy, puerperium and perinatal conditions",
    "Ear and labyrinth disorders", "Cardiac disorders", "Nervous system disorders",
    "Injury, poisoning and procedural complications",
)
TOX21_TASKS = ("NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma",
               "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53")

_ROWS = [
    _moleculenet("bbbp", "BBBP.csv", False, "d07a38487aeac5cee5508413e468043ef3097451d2a112701c2d60be9ec6b662",
        "smiles", ["p_np"], "classification", 2050, "blood-brain barrier penetration"),
    _moleculenet("bace", "bace.csv", False, "d36f089649984f7bfaa4589ccc3ae907b831780a01ccfd065a5b604939e1a5df",
        "smiles", ["Class"], "classification", 1513, "BACE-1 inhibition"),
    _moleculenet("clintox", "clintox.csv", True, "0bd655529cebe6d94addd48b8afdab6fa0438b4503a470866231793f235d7e61",
        "smiles", ["FDA_APPROVED", "CT_TOX"], "classification", 1484, "clinical-trial toxicity"),
    _moleculenet("sider", "sider.csv", True, "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
        "smiles", SIDER_TASKS, "classification", 1427, "side effects by organ class"),
    _moleculenet("tox21", "tox21.csv", True, "7d7e7facd853a63e79ddce4e9c3fcb7a0d83a1c300b603031c0f2c64fbe77761",
        "smiles", TOX21_TASKS, "classification", 7831, "Tox21 nuclear-receptor and stress-response assays"),
    _moleculenet("hiv", "HIV.csv", False, "54713c3205055055ea4214e8c4b0d22d93af7e54ad2c48f4edc866e161e57262",
        "smiles", ["HIV_active"], "classification", 41127, "HIV replication inhibition"),
    _moleculenet("esol", "delaney-processed.csv", False,
        "8c06a76f0c6487d29ab0f903e6a7a7139f189ab3c1178f159c8be8964602f189",
        "smiles", ["measured log solubility in mols per litre"], "regression", 1128, "aqueous solubility"),
    _moleculenet("freesolv", "SAMPL.csv", False, "ab5895d914ee87cb563bd7b9611e869527bba45bec6b014d34dc495a0f9dcb72",
        "smiles", ["expt"], "regression", 642, "hydration free energy"),
    _moleculenet("lipophilicity", "Lipophilicity.csv", False,
        "aed41590cb30609d51d8e08ad3ff06495a76e80e211358801f596b10da69bacd",
        "smiles", ["exp"], "regression", 4200, "octanol/water distribution (logD)"),
    DatasetInfo(name="b3db_classification", file="B3DB_classification.tsv", url=None,
                sha256="47a160aea1551423ead2aab70b301fb1646aea03cf151fd614eb37c78fa55b82",
                smiles_col="SMILES", tasks=("BBB+/BBB-",), task_type="classification", metric="rocauc",
                rows=7807, sep="\t", package="B3DB", label_map={"BBB+": 1.0, "BBB-": 0.0},
                description="B3DB blood-brain barrier permeability (BBB+ = 1), shipped by qc-b3db"),
    DatasetInfo(name="moleculeace", file=_MOLECULEACE_WHEEL, url=_PYPI_FILES + _MOLECULEACE_WHEEL,
                sha256="c2028c9a75281eab53d3b3e7dc11cbc8ac970d008bac4a0d3927f11ac2024bdc",
                smiles_col="smiles", tasks=_MOLECULEACE_TARGETS, task_type="regression", metric="rmse",
                rows=35633, description="MoleculeACE's 30 ChEMBL targets, pKi / pEC50 per target (48,714 labels), "
                                        "read from the MoleculeACE 3.0.0 wheel (fedmol.data.moleculeace)"),
    DatasetInfo(name="b3db_regression", file="B3DB_regression.tsv", url=None,
                sha256="1be4e33ab1fa1d99897541b6e0a9a00cd6061cf970a36dc838e640407735eba1",
                smiles_col="SMILES", tasks=("logBB",), task_type="regression", metric="rmse",
                rows=1058, sep="\t", package="B3DB", description="B3DB logBB, shipped by qc-b3db"),
]

#: name -> DatasetInfo, the registry.
DATASETS: dict[str, DatasetInfo] = {row.name: row for row in _ROWS}

#: The offline default: ships inside a PyPI dependency, needs no data folder.
DEFAULT_DATASET = "b3db_classification"


def get_info(name: str) -> DatasetInfo:
    """Registry lookup, case-insensitive; an unknown name lists the known ones."""
    key = name.strip().lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
                        "(or pass your own file with --csv FILE --smiles-col COL --target-cols A,B --task ...)")
    return DATASETS[key]


def csv_info(path: str | Path, smiles_col: str, target_cols: str | list[str], task: str) -> DatasetInfo:
    """A partner's own CSV as a registry row (name ``csv:<stem>``, no URL, no known checksum)."""
    path = Path(path)
    if task not in TASK_TYPES:
        raise DataError(f"--task must be one of {', '.join(TASK_TYPES)}, got {task!r}")
    if isinstance(target_cols, str):
        target_cols = [c.strip() for c in target_cols.split(",") if c.strip()]
    if not target_cols:
        raise DataError("--target-cols needs at least one column name (comma-separated)")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return DatasetInfo(name=f"csv:{path.stem}", file=str(path), url=None, sha256=None, smiles_col=smiles_col,
                       tasks=tuple(target_cols), task_type=task, metric=METRIC_FOR_TASK[task], rows=None,
                       sep=sep, description=f"user CSV {path}")
