#!/usr/bin/env python3
"""The Fashion-MNIST spec of one method for the method benchmarks (bench/seed_claim.sh,
bench/method_vs_torch.sh): examples/fashion-mnist.json's data, model (ResNet-18, cifar stem,
dim 128, MLP hidden 512), aug+ and evaluation for every method, the same schedule for every
method (1 warm-up epoch, then cosine per step), and each method's own loss and optimizer:
  moco_v2  the example's MoCo v2 (K 4096, m 0.99, τ 0.1, shuffle BN as 8 splits), SGD 0.06, wd 5e-4
  simclr   NT-Xent τ 0.5 (the SimCLR code's CIFAR-10 setting), LARS 0.3 x batch/256, wd 1e-6
  moco_v3  m 0.99 rising to 1, τ 1.0 (the MoCo v3 code's ResNet defaults), LARS 0.6 x batch/256, wd 1e-6
Usage: method_spec.py METHOD BATCH WIDTH EPOCHS [QUEUE]  (prints the spec; SEED= sets its seed,
else the example's)
"""
import json
import os
import sys

method, batch, width, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = json.load(open(os.path.join(root, "examples", "fashion-mnist.json")))
spec["name"] = f"fmnist-{method}-b{batch}"
spec["method"] = method
spec["model"]["width"] = width
spec["optim"].update({"batch_size": batch, "epochs": epochs, "schedule": "cosine_step", "warmup_epochs": 1})
if os.environ.get("SEED"):
    spec["seed"] = int(os.environ["SEED"])
moco = spec.pop("moco")
if method == "moco_v2":
    spec["moco"] = moco
    if len(sys.argv) > 5:
        spec["moco"]["queue"] = int(sys.argv[5])
    spec["optim"].update({"optimizer": "sgd", "lr_scaling": "none"})
elif method == "simclr":
    spec["simclr"] = {"temperature": 0.5}
    spec["optim"].update({"optimizer": "lars", "lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6})
elif method == "moco_v3":
    spec["moco_v3"] = {"momentum": 0.99, "temperature": 1.0}
    spec["optim"].update({"optimizer": "lars", "lr": 0.6, "lr_scaling": "linear", "weight_decay": 1e-6})
else:
    sys.exit(f"unknown method {method}")
print(json.dumps(spec, indent=1))
