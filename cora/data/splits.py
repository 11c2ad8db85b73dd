"""Base / novel splits of a dataset's categories: COCO OVD (48 / 17), LVIS (rare = novel), or a split file.

    split = coco_ovd_split("instances_val2017.json")    # or a loaded json dict, or its "categories" list
    split.base_names, split.novel_names                   # in category-id order
    split.id_of("tv"), split.name_of(62), split.group_of("cat")   # -> 62, "tv", "novel"
    split = lvis_ovd_split("lvis_v1_val.json")            # frequency "r" -> novel, "c" / "f" -> base
    split = load_split("shapes/split.json", "shapes/instances_val.json")   # {"base": [...], "novel": [...]}
    cora.fileio.write_json("instances_train2017_base.json", ovd_instances(data, coco_ovd_split(data), "train"))

Splits are always validated against the categories of a json: a name the json does not have is a
ValueError that lists the unknown names with close-match hints. Category names are used as CLIP prompts:
LVIS names (categories with a `synset`) get underscores replaced by spaces ("traffic_light" ->
"traffic light"): cora.vocabulary.category_name.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cora.fileio import read_json
from cora.vocabulary import category_name

# COCO 2017 category names of the COCO OVD benchmark (OVR-CNN's split, used by CORA).
COCO_BASE_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep", "bear",
    "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard", "bottle", "fork",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
    "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock",
    "vase", "toothbrush",
)
COCO_NOVEL_CLASSES: tuple[str, ...] = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup", "knife",
    "cake", "couch", "keyboard", "sink", "scissors",
)
LVIS_FREQUENCIES = ("r", "c", "f")  # rare (1-10 training images), common (11-100), frequent (> 100)

SPLIT_NAMES = ("coco", "lvis")  # built-in splits of load_split; anything else is a split file


def load_categories(source: str | os.PathLike | dict | Sequence[dict], where: str | None = None) -> list[dict]:
    """The `categories` of a COCO / LVIS json (path, loaded dict, or the list itself), sorted by id.

    Raises ValueError when there are none or an entry lacks `id` / `name`, or ids / names repeat; `where`
    names the source in messages (default: the path, "the json" or "categories").
    """
    if isinstance(source, (str, os.PathLike)):
        where = where or repr(os.fspath(source))
        with open(source, encoding="utf-8") as f:
            source = json.load(f)
    where = where or ("the json" if isinstance(source, dict) else "categories")
    categories = source.get("categories") if isinstance(source, dict) else source
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{where} has no 'categories': expected a non-empty list of {{'id', 'name'}} entries "
                         "(a COCO / LVIS instances json)")
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{where}: categories[{i}] must be {{'id': int, 'name': str, ...}}, got {cat!r}"[:300])
    categories = sorted(categories, key=lambda c: c["id"])
    for key, values in (("id", [c["id"] for c in categories]), ("name", [category_name(c) for c in categories])):
        repeated = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
        if repeated:
            raise ValueError(f"{where}: repeated category {key}s {repeated[:10]}")
    return categories


def unknown_names_message(what: str, unknown: Iterable[str], known: Sequence[str], limit: int = 10) -> str:
    """"<what>: 'tv' (did you mean 'tvmonitor'?), 'zebr' (did you mean 'zebra'?)": the first `limit`
    unknown names with close-match hints, then how many more."""
    unknown, parts = list(unknown), []
    for name in unknown[:limit]:
        hint = close_match(name, known)
        parts.append(f"{name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return f"{what}: {', '.join(parts)}{more}"


def close_match(name: str, known: Sequence[str]) -> str | None:
    """The most similar known name (difflib), else one that contains `name` or is contained in it
    ("tv" -> "tvmonitor"), else None."""
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if hint:
        return hint[0]
    key = name.lower().replace("_", " ")
    return next((k for k in known if min(len(key), len(k)) >= 2 and (key in k.lower() or k.lower() in key)), None)


@dataclass(frozen=True)
class Split:
    """A base / novel partition over (a subset of) a dataset's categories.

    ids / names: all categories of the dataset, sorted by id (names prompt-ready, see category_name).
    base / novel: category ids of each group; categories in neither (COCO's 15 classes outside the
    benchmark) have group None. frequency: LVIS frequency ("r" / "c" / "f") per category id, when known.
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    base: frozenset[int]
    novel: frozenset[int]
    frequency: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.ids) != len(self.names):
            raise ValueError(f"ids and names differ in length: {len(self.ids)} vs {len(self.names)}")
        if self.base & self.novel:
            raise ValueError(f"categories both base and novel: {sorted(self.base & self.novel)}")
        stray = sorted((self.base | self.novel) - set(self.ids))
        if stray:
            raise ValueError(f"base / novel ids that are not categories: {stray}")

    @property
    def base_ids(self) -> list[int]:
        return [i for i in self.ids if i in self.base]

    @property
    def novel_ids(self) -> list[int]:
        return [i for i in self.ids if i in self.novel]

    @property
    def base_names(self) -> list[str]:
        return [self.name_of(i) for i in self.base_ids]

    @property
    def novel_names(self) -> list[str]:
        return [self.name_of(i) for i in self.novel_ids]

    @property
    def ovd_ids(self) -> list[int]:
        """Base and novel category ids, in id order (COCO OVD evaluation: the 65 classes)."""
        return [i for i in self.ids if i in self.base or i in self.novel]

    def name_of(self, category_id: int) -> str:
        try:
            return self.names[self.ids.index(category_id)]
        except ValueError:
            raise KeyError(f"no category with id {category_id!r} (ids {self.ids[0]}..{self.ids[-1]})") from None

    def id_of(self, name: str) -> int:
        """Category id of a name; LVIS-style underscores are accepted ("traffic_light")."""
        return self.ids_of([name])[0]

    def ids_of(self, names: Iterable[str]) -> list[int]:
        """Category ids of names, in order; unknown names are one ValueError listing them all with hints."""
        lookup = dict(zip(self.names, self.ids))
        ids, unknown = [], []
        for name in names:
            found = lookup.get(name, lookup.get(name.replace("_", " "))) if isinstance(name, str) else None
            if found is None:
                unknown.append(str(name))
            else:
                ids.append(found)
        if unknown:
            raise ValueError(unknown_names_message("unknown class names", unknown, self.names))
        return ids

    def group_of(self, category: int | str) -> str | None:
        """'base', 'novel' or None, for a category id or name."""
        cid = category if isinstance(category, int) else self.id_of(category)
        if cid not in self.ids:
            raise KeyError(f"no category with id {cid!r}")
        return "base" if cid in self.base else "novel" if cid in self.novel else None

    def to_dict(self) -> dict[str, list[str]]:
        """{"base": [names], "novel": [names]}: the split-file format (see load_split)."""
        return {"base": self.base_names, "novel": self.novel_names}


def make_split(categories, base_names: Sequence[str], novel_names: Sequence[str], what: str = "split") -> Split:
    """A Split from base / novel names, validated against `categories` (see load_categories for the forms).
    Categories holding every base class and none of the novel ones (an OVD training json) give a split
    without novel classes; any other missing name is an error.

    Raises ValueError listing every name the categories lack (with close-match hints), or names in both groups.
    """
    categories = load_categories(categories)
    names = [category_name(c) for c in categories]
    known = lambda n: n in names or n.replace("_", " ") in names  # noqa: E731
    if novel_names and base_names and not any(known(n) for n in novel_names) and all(known(n) for n in base_names):
        novel_names = []  # a json with every base class and no novel one: an OVD training json (make-ovd-json)
    wanted = [*base_names, *novel_names]
    unknown = [n for n in wanted if not known(n)]
    if unknown:
        wrong_json = " (most are missing: is it the right json?)" if len(unknown) > len(wanted) / 2 else ""
        raise ValueError(unknown_names_message(
            f"{len(unknown)} {what} names not among the json's {len(names)} categories{wrong_json}", unknown, names))
    split = Split(ids=tuple(c["id"] for c in categories), names=tuple(names), base=frozenset(), novel=frozenset(),
                  frequency={c["id"]: c["frequency"] for c in categories if "frequency" in c})
    base, novel = set(split.ids_of(base_names)), set(split.ids_of(novel_names))
    if base & novel:
        raise ValueError(f"{what}: classes both base and novel: {sorted(split.name_of(i) for i in base & novel)}")
    return Split(split.ids, split.names, frozenset(base), frozenset(novel), split.frequency)


def coco_ovd_split(categories) -> Split:
    """The COCO OVD split (48 base / 17 novel) over a COCO 2017 instances json's categories."""
    return make_split(categories, COCO_BASE_CLASSES, COCO_NOVEL_CLASSES, "COCO OVD split")


def lvis_ovd_split(categories) -> Split:
    """LVIS: rare categories are novel; common and frequent ones are base. Every category needs a
    `frequency` in ("r", "c", "f")."""
    categories = load_categories(categories)
    bad = [c["name"] for c in categories if c.get("frequency") not in LVIS_FREQUENCIES]
    if bad:
        raise ValueError(f"LVIS split needs a 'frequency' of {'/'.join(LVIS_FREQUENCIES)} on every category; "
                         f"{len(bad)} lack one: {bad[:5]}")
    base = [category_name(c) for c in categories if c["frequency"] != "r"]
    novel = [category_name(c) for c in categories if c["frequency"] == "r"]
    return make_split(categories, base, novel, "LVIS split")


def load_split(spec: str | os.PathLike | Split, categories) -> Split:
    """"coco", "lvis", a split file ({"base": [names], "novel": [names]}) or a Split, over `categories`."""
    if isinstance(spec, Split):
        return make_split(categories, spec.base_names, spec.novel_names)
    if spec == "coco":
        return coco_ovd_split(categories)
    if spec == "lvis":
        return lvis_ovd_split(categories)
    path = os.fspath(spec)
    if not os.path.isfile(path):
        hint = close_match(path, SPLIT_NAMES)
        raise FileNotFoundError(f"split {path!r} is neither one of {', '.join(SPLIT_NAMES)} nor a split file"
                                + (f" (did you mean {hint!r}?)" if hint else ""))
    data = read_json(path, "split file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("base", "novel")):
        raise ValueError(f"split file {path!r} must hold {{\"base\": [names], \"novel\": [names]}}")
    return make_split(categories, data["base"], data["novel"], f"split file {path!r}")


def ovd_instances(data: dict, split: Split, image_set: str) -> dict:
    """An OVD instances json from a full one (e.g. instances_train2017.json), category ids unchanged.

    image_set "train": base categories and their annotations only; images without a base annotation
    dropped. "val": base + novel categories (COCO: the 65 classes) and their annotations; all images kept.
    """
    if image_set not in ("train", "val"):
        raise ValueError(f"image_set must be 'train' or 'val', got {image_set!r}")
    keep = set(split.base_ids if image_set == "train" else split.ovd_ids)
    annotations = [a for a in data.get("annotations", []) if a["category_id"] in keep]
    images = data.get("images", [])
    if image_set == "train":
        annotated = {a["image_id"] for a in annotations}
        images = [img for img in images if img["id"] in annotated]
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out["info"] = {**data.get("info", {}), "ovd_split": {"image_set": image_set, **split.to_dict()}}
    out["images"] = images
    out["annotations"] = annotations
    out["categories"] = [c for c in data["categories"] if c["id"] in keep]
    return out
