"""What PALS does at a few pixels of one image, for the explanation figure (DESIGN.md section 2).

For the first validation image and a trained run, pick one query pixel at the centre of each of
the largest ground-truth regions and save, at the feature resolution, its affinity row
``A_i = softmax_j(<f_i, f_j> / tau)`` (step 3) and the resulting targets: the one-hot label,
uniform label smoothing (``eps``) and PALS ``alpha * onehot + (1 - alpha) * q_i`` (steps 4-5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import atomic_file
from .config import dataset_params, method_params
from .data import open_dataset
from .data.transforms import eval_transforms
from .losses import build_loss
from .models import build_model


def query_pixels(label: np.ndarray, count: int, ignore_index: int = 255) -> list[tuple[int, int]]:
    """For the ``count`` largest classes in ``label``, the labelled pixel closest to the class's centroid."""
    classes, sizes = np.unique(label[label != ignore_index], return_counts=True)
    pixels = []
    for cls in classes[np.argsort(-sizes)][:count]:
        ys, xs = np.nonzero(label == cls)
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        pixels.append((int(ys[nearest]), int(xs[nearest])))
    return pixels


@torch.no_grad()
def explain(params: dict, dataset: str, method: str, model_path: Path, output: Path, count: int = 3, eps: float = 0.1) -> Path:
    """Write ``output`` (npz): image, label, query pixels, affinity maps and the three targets per pixel."""
    spec = dataset_params(params, dataset)
    loss_name, loss_params = method_params(params, method)
    if loss_name != "pals":
        raise ValueError(f"explain needs a pals run, got method {method!r} (loss {loss_name!r})")
    num_classes = spec["num_classes"]
    targets = {name: build_loss(name, num_classes, **extra) for name, extra in
               (("ce", {}), ("ls", {"eps": eps}), ("pals", loss_params))}  # the training losses' own targets (step 5)
    tau, alpha = targets["pals"].tau, targets["pals"].alpha
    model = build_model(params["model"]["name"], num_classes)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=False)["model"])
    model.eval()
    data = open_dataset(spec, spec.get("eval_split", "val"), transforms=eval_transforms())
    image, label = data[0]
    output_maps = model(image[None])
    logits, features = output_maps["out"], output_maps["feat"]
    per_pixel = {name: loss.targets(logits, label[None].long(), features)[0] for name, loss in targets.items()}
    keys = F.normalize(features[0].flatten(1), dim=0)  # [D, N]
    height, width = features.shape[-2:]
    label = label.numpy()
    pixels = query_pixels(label, count)
    affinities = []
    for y, x in pixels:
        fy, fx = min(int(y * height / label.shape[0]), height - 1), min(int(x * width / label.shape[1]), width - 1)
        affinities.append(torch.softmax(keys[:, fy * width + fx] @ keys / tau, dim=0).reshape(height, width).numpy())
    onehot, uniform, pals = ([per_pixel[name][:, y, x].double().numpy() for y, x in pixels] for name in ("ce", "ls", "pals"))
    with Image.open(data.files[0][0]) as picture:
        raw = np.asarray(picture.convert("RGB"))
    with atomic_file(output) as temporary:
        np.savez_compressed(temporary, image=raw, label=label, pixels=np.array(pixels), affinity=np.array(affinities),
                            onehot=np.array(onehot), uniform=np.array(uniform), pals=np.array(pals),
                            tau=tau, alpha=alpha, eps=eps, image_id=data.ids[0])
    return output

