from localdpo.steers.steer import Steer

COLORS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "pink",
    "brown",
    "gray",
    "gold",
]


def make_steers(n: int = 12) -> list[Steer]:
    """Small list-answer steers: the model wrote a wrong second item, the person corrected it mid-answer."""
    steers = []
    for i in range(n):
        a, b, c = COLORS[i % 12], COLORS[(i + 3) % 12], COLORS[(i + 7) % 12]
        steers.append(
            Steer(
                prompt=f"List three colors starting with {a}.",
                prefix=f"1. {a.capitalize()}\n2. ",
                rejected=f"{c.capitalize()} car\n3. {b.capitalize()}",
                chosen=f"{b.capitalize()}\n3. {b.capitalize()}",
                id=f"s{i}",
            )
        )
    return steers


def tiny_config(run_dir, *overrides):
    """A fast CPU config: tiny random model, live reference, no drift, no W&B, no final save."""
    from localdpo.trainer.config import load_config

    return load_config(
        None,
        [
            "model.name=tiny",
            f"run_dir={run_dir}",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.progress=false",
            "optim.lr=1e-3",
            "loss.reference=live",
            "eval.drift=false",
            "eval.at_start=false",
            "wandb.mode=disabled",
            "checkpoint.save_final=false",
            *overrides,
        ],
    )
