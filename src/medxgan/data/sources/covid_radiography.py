"""covid-radiography: the COVID-19 Radiography Database (Kaggle), COVID vs Normal.

Layout: `COVID-19_Radiography_Dataset/<class>/{images,masks}/*.png` with classes COVID, Normal,
Lung_Opacity and `Viral Pneumonia` (with a space). The masks outline the lungs, not lesions,
so they are not used: this dataset gets no localisation scores. COVID and Normal images come
from different hospitals and repositories, which a classifier can tell apart without looking
at the lungs (a shortcut the explanations may expose). There is no patient ID and no split:
train, validation and test are drawn here, stratified, with the configured seed.
"""

from pathlib import Path

from medxgan.data.download import KaggleRoute
from medxgan.data.preparation import Collected, Record, drop
from medxgan.data.sources.layout import find_folder, image_files, require_folders, subfolders

NAME = "covid-radiography"
ROOT_FOLDER = "COVID-19_Radiography_Dataset"
POSITIVE_CLASS, NEGATIVE_CLASS = "COVID", "Normal"
IMAGES = "images"
DEDUPLICATE = False
NEEDS_NEGATIVES_FROM = False
ROUTES = {"kaggle": KaggleRoute("tawsifurrahman/covid19-radiography-database")}
ROUTE_ORDER = ("kaggle",)


def collect(root: Path) -> Collected:
    base = find_folder(root, ROOT_FOLDER, marker=POSITIVE_CLASS)
    require_folders(base, (POSITIVE_CLASS, NEGATIVE_CLASS))
    records, dropped = [], []
    for name in subfolders(base):
        require_folders(base / name, (IMAGES,))
        for file in image_files(base / name / IMAGES):
            record = Record(file, name == POSITIVE_CLASS, name)
            if name in (POSITIVE_CLASS, NEGATIVE_CLASS):
                records.append(record)
            else:
                dropped.append(drop(record, "class not in the task", f"{POSITIVE_CLASS} vs {NEGATIVE_CLASS}"))
    return Collected(root, records, dropped)
