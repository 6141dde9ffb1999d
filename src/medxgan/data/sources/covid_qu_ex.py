"""covid-qu-ex: COVID-QU-Ex (Kaggle), COVID-19 vs Normal, the public stand-in for the paper's
in-house COVID set.

Only the "Infection Segmentation Data" subset is used: its COVID-19 images come with infection
masks, which make localisation scoring on real data possible. Layout:
`Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks,infection masks}/`.
The dataset's own Train/Val/Test split is kept. Normal images have no lesion, so they get no
mask (empty `mask_path`): localisation is scored on positives only. A COVID-19 image whose
infection mask is empty keeps no mask either (counted in preparation.json).
"""

from pathlib import Path

from medxgan.data.download import KaggleRoute
from medxgan.data.preparation import Collected, Record, drop
from medxgan.data.sources.layout import find_folder, image_files, require_folders

NAME = "covid-qu-ex"
ROOT_FOLDER = "Infection Segmentation Data"
SPLIT_FOLDERS = {"Train": "train", "Val": "val", "Test": "test"}
POSITIVE_CLASS, NEGATIVE_CLASS, OTHER_CLASS = "COVID-19", "Normal", "Non-COVID"
IMAGES, LESION_MASKS = "images", "infection masks"
DEDUPLICATE = False
NEEDS_NEGATIVES_FROM = False
ROUTES = {"kaggle": KaggleRoute("anasmohammedtahir/covidqu")}
ROUTE_ORDER = ("kaggle",)


def collect(root: Path) -> Collected:
    base = find_folder(root, ROOT_FOLDER, marker=next(iter(SPLIT_FOLDERS)))
    require_folders(base, SPLIT_FOLDERS)
    records, dropped = [], []
    for folder_name, split in SPLIT_FOLDERS.items():
        folder = base / folder_name
        require_folders(folder, (POSITIVE_CLASS, NEGATIVE_CLASS, OTHER_CLASS))
        require_folders(folder / POSITIVE_CLASS, (IMAGES, LESION_MASKS))
        for name in (POSITIVE_CLASS, NEGATIVE_CLASS, OTHER_CLASS):
            require_folders(folder / name, (IMAGES,))
            for file in image_files(folder / name / IMAGES):
                mask = folder / name / LESION_MASKS / file.name
                record = Record(file, name == POSITIVE_CLASS, name, split,
                                mask_file=mask if name == POSITIVE_CLASS and mask.is_file() else None)
                if name == OTHER_CLASS:
                    dropped.append(drop(record, "class not in the task", f"{POSITIVE_CLASS} vs {NEGATIVE_CLASS}"))
                else:
                    records.append(record)
    return Collected(root, records, dropped)
