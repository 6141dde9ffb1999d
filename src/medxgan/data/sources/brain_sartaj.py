"""brain-sartaj: Sartaj Bhuvaji's brain tumour MRI set, the paper's brain data (tumour vs no tumour).

Layout: `Training/` and `Testing/`, each with glioma_tumor, meningioma_tumor, no_tumor and
pituitary_tumor folders of JPGs (3,264 in all, RGB, mostly 512x512). 166 groups of files are
byte-identical, and 88 of the 105 Testing/no_tumor images are copies of Training images, so
exact and near duplicates are removed (`DEDUPLICATE`); a group keeps its Testing copy.
"""

from pathlib import Path

from medxgan.data.download import GitHubRoute, HuggingFaceRoute, KaggleRoute
from medxgan.data.preparation import Collected, Record
from medxgan.data.sources.layout import find_folder, image_files, require_folders

NAME = "brain-sartaj"
NEGATIVE_CLASS = "no_tumor"
POSITIVE_CLASSES = ("glioma_tumor", "meningioma_tumor", "pituitary_tumor")
SPLIT_FOLDERS = {"Training": "train", "Testing": "test"}
DEDUPLICATE = True
NEEDS_NEGATIVES_FROM = False
ROUTES = {
    "kaggle": KaggleRoute("sartajbhuvaji/brain-tumor-classification-mri"),
    "huggingface": HuggingFaceRoute("sartajbhuvaji/Brain-Tumor-Classification", "main", ("Training.zip", "Testing.zip")),
    "github": GitHubRoute("SartajBhuvaji/Brain-Tumor-Classification-DataSet", "3ea9f4eae54c67e5bddbf6f7a73582967a5f5f79"),
}
ROUTE_ORDER = ("kaggle", "huggingface", "github")


def collect(root: Path) -> Collected:
    records = []
    for folder_name, split in SPLIT_FOLDERS.items():
        folder = find_folder(root, folder_name, marker=NEGATIVE_CLASS)
        require_folders(folder, (*POSITIVE_CLASSES, NEGATIVE_CLASS))
        for name in (*POSITIVE_CLASSES, NEGATIVE_CLASS):
            records += [Record(file, name != NEGATIVE_CLASS, name, split) for file in image_files(folder / name)]
    return Collected(root, records)
