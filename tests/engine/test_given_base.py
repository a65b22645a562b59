"""Refining a given image (`critifusion refine`) in the engine: the image read as untrusted
input, the fit to the model's size, VAE encoding, the run folder of a given base (history,
resume and eval read it), `--from` a past run, and the seed rule that makes a run folder
re-run to the same bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from critifusion_tui.engine.given_base import GIVEN_KEY, given_base_stage, open_past_run, start_refine_run
from critifusion_tui.engine.image_input import ImageInputError, critique_png, fit, fit_size, read_image
from critifusion_tui.engine.pipeline import Session
from critifusion_tui.engine.specfusion import refine_seed
from critifusion_tui.engine.store import RunStore, StoreError
from tests.engine.test_pipeline import offline_settings

PROMPT = "a red fox in a forest"


def write_image(path: Path, size=(100, 60), mode="RGB", color=(200, 40, 30), fmt=None, **save) -> Path:
    image = Image.new(mode, size, color)
    # A horizontal ramp, so a crop shows where it was taken from.
    for x in range(size[0]):
        image.putpixel((x, 0), (x % 256, 0, 0) if mode == "RGB" else image.getpixel((0, 0)))
    image.save(path, format=fmt, **save)
    return path


# ---------------------------------------------------------------- the fit rule


@pytest.mark.parametrize(
    ("original", "target", "scaled", "crop"),
    [
        ((100, 60), (64, 64), (107, 64), (21, 0, 85, 64)),  # landscape: the height fits
        ((60, 100), (64, 64), (64, 107), (0, 21, 64, 85)),  # portrait: the width fits
        ((1024, 1024), (1024, 1024), (1024, 1024), (0, 0, 1024, 1024)),  # nothing to do
        ((32, 16), (64, 64), (128, 64), (32, 0, 96, 64)),  # small images are scaled up
        ((1920, 1080), (1024, 1024), (1820, 1024), (398, 0, 1422, 1024)),
        ((3000, 2000), (1216, 832), (1248, 832), (16, 0, 1232, 832)),  # a non-square target
    ],
)
def test_fit_scales_to_cover_and_crops_the_centre(original, target, scaled, crop):
    plan = fit_size(original, *target)
    assert (plan.scaled, plan.crop, plan.size) == (scaled, crop, target)
    assert plan.scale == max(target[0] / original[0], target[1] / original[1])
    assert plan.record()["crop"] == list(crop)


def test_fit_returns_the_centre_of_the_scaled_image(tmp_path):
    image = Image.new("RGB", (120, 60))
    for x in range(120):
        for y in range(60):
            image.putpixel((x, y), (x * 2, y * 4, 0))
    fitted, plan = fit(image, 64, 64)
    assert fitted.size == (64, 64) and plan.scaled == (128, 64)
    expected = image.resize((128, 64), Image.Resampling.LANCZOS).crop((32, 0, 96, 64))
    assert fitted.tobytes() == expected.tobytes()
    assert "120x60 scaled by 1.067 to 128x64 (Lanczos), centre-cropped to 64x64 (offset 32,0)" == plan.describe()


# ---------------------------------------------------------------- the image file


def test_read_image_gives_an_upright_rgb_image_and_what_the_file_was(tmp_path):
    given = read_image(write_image(tmp_path / "fox.png"))
    assert given.image.mode == "RGB" and given.size == (100, 60) and given.format == "PNG"
    record = given.record()
    assert record["file"] == "fox.png" and (record["width"], record["height"]) == (100, 60)
    assert record["bytes"] == (tmp_path / "fox.png").stat().st_size and len(record["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(record)  # the name, never where it came from
    assert critique_png(given) == (tmp_path / "fox.png").read_bytes()  # a PNG goes as it is


def test_exif_orientation_and_transparency_are_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    path = tmp_path / "turned.jpg"
    Image.new("RGB", (80, 40), (10, 200, 10)).save(path, exif=exif)
    turned = read_image(path)
    assert turned.size == (40, 80) and turned.format == "JPEG"
    assert any("EXIF orientation (6)" in note for note in turned.notes)
    png = critique_png(turned)  # another format goes as the upright image, re-encoded
    with Image.open(io.BytesIO(png)) as sent:
        assert sent.format == "PNG" and sent.size == (40, 80)

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(clear)
    flattened = read_image(clear)
    assert flattened.image.getpixel((3, 3)) == (255, 255, 255)  # onto white, not black
    assert "transparency flattened onto white" in flattened.notes


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "not a regular file"),
        (lambda p: (p.write_bytes(b""), p)[1], "the file is empty"),
        (lambda p: (p.write_text("a fox, in words"), p)[1], "not an image file"),
        (lambda p: (write_image(p, size=(200, 200)), p.write_bytes(p.read_bytes()[:120]), p)[2], "cannot decode"),
    ],
    ids=["missing", "folder", "empty", "text", "truncated"],
)
def test_unreadable_images_are_one_error_naming_the_file(tmp_path, make, said):
    path = make(tmp_path / "img.png")
    with pytest.raises(ImageInputError) as caught:
        read_image(path)
    assert said in str(caught.value) and str(path) in str(caught.value)


# ---------------------------------------------------------------- encoding


def test_encode_is_the_vae_mean_times_the_scaling_factor(engine):
    image = Image.new("RGB", (64, 48), (180, 90, 20))
    latent = engine.encode(image)
    assert latent.shape == (1, 4, 6, 8) and latent.dtype == engine.txt2img.unet.dtype
    assert torch.equal(latent, engine.encode(image))  # no sampling: the same latent every time
    vae = engine.txt2img.vae
    pixels = engine.txt2img.image_processor.preprocess(image)
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mean
    assert torch.allclose(latent, mean * vae.config.scaling_factor)
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.encode(Image.new("RGB", (60, 60)))


# ---------------------------------------------------------------- refine runs


async def refine(session, prompt=PROMPT, **kwargs):
    events = []
    run = start_refine_run(session, prompt, emit=events.append, **kwargs)
    manifest = await run.run_all()
    return run, manifest, events


async def test_a_given_image_becomes_a_normal_run_folder(tmp_path, engine):
    from critifusion_tui.eval.runs import find_runs, variant_images
    from critifusion_tui.tui.screens.history import read_run

    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    given = read_image(write_image(tmp_path / "fox.png"))
    run, manifest, events = await refine(session, image=given)
    assert manifest["status"] == "done"
    stages = manifest["stages"]
    assert list(stages) == ["tags", "components", "base", "critique", "refine"]
    assert stages["tags"]["skipped"] and stages["tags"]["source"] == "given" and stages["tags"]["positive"] == PROMPT
    assert stages["components"]["skipped"] and stages["critique"]["skipped"]
    base = stages["base"]
    assert base["source"] == "given" and base["given"]["file"] == "fox.png"
    assert (base["given"]["width"], base["given"]["height"]) == (100, 60)
    assert base["fit"]["scaled"] == [107, 64] and base["fit"]["crop"] == [21, 0, 85, 64]
    assert (base["width"], base["height"], base["image"], base["latent"]) == (
        64,
        64,
        "base.png",
        "base_latent.safetensors",
    )
    assert manifest[GIVEN_KEY]["source"] == "given" and manifest[GIVEN_KEY]["record"]["image"] == "base.png"
    with Image.open(run.folder / "base.png") as saved:
        assert saved.size == (64, 64) and saved.text["source"] == "given: fox.png"
        assert saved.convert("RGB").tobytes() == fit(given.image, 64, 64)[0].tobytes()
    latent = RunStore.open(run.folder).read_latent("base_latent.safetensors")
    assert torch.equal(latent, engine.encode(fit(given.image, 64, 64)[0]))
    # Without a critique the refinement prompt is the prompt merged with nothing (SPEC 5).
    assert manifest["prompts"]["refinement"]["value"] == run.criticore.refinement_prompt("", PROMPT, PROMPT)
    refine_record = stages["refine"]
    assert refine_record["seed"] == refine_seed(2026, 3) and refine_record["prompt"] == PROMPT
    with Image.open(run.folder / "refined.png") as refined:
        assert refined.size == (64, 64)
    notices = [getattr(e, "message", "") for e in events]
    assert any("100x60 scaled by 1.067 to 107x64 (Lanczos), centre-cropped to 64x64" in m for m in notices)

    # The history screen and eval read it like any run.
    assert read_run(run.folder).data["prompt"] == PROMPT
    assert find_runs([tmp_path / "runs"]) == ([run.folder], [])
    assert set(variant_images(RunStore.open(run.folder))) == {"base", "refined"}
    await session.aclose()


async def test_the_critique_checks_the_given_image_against_the_components(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, manifest, _ = await refine(session, image=read_image(write_image(tmp_path / "fox.png")), critique=True)
    stages = manifest["stages"]
    assert not stages["components"].get("skipped") and stages["components"]["components"] == [PROMPT]
    critique = stages["critique"]
    assert not critique.get("skipped") and critique["prompt"] == PROMPT
    assert critique["candidates"][0]["model"] == "rules"
    assert manifest["prompts"]["refinement"]["by"] == "critique:critic"
    await session.aclose()


async def test_a_rerun_of_a_given_base_restores_it_and_never_draws(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run, _, _ = await refine(session, image=read_image(write_image(tmp_path / "fox.png")))
    before = {name: (run.folder / name).read_bytes() for name in ("base.png", "base_latent.safetensors", "refined.png")}
    base_record = dict(run.store.stage("base"))
    reopened = session.resume(run.folder)
    await reopened.rerun("base")  # what the app's retry of the base does
    await reopened.run_all()
    record = reopened.store.stage("base")
    assert {k: v for k, v in record.items() if k != "seconds"} == {
        k: v for k, v in base_record.items() if k != "seconds"
    }
    for name, data in before.items():
        assert (run.folder / name).read_bytes() == data, name
    await session.aclose()


async def test_a_given_base_that_was_never_saved_is_not_drawn_instead(tmp_path, engine):
    from critifusion_tui.engine.pipeline import RunFailed

    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = start_refine_run(session, PROMPT, image=read_image(write_image(tmp_path / "fox.png")))
    reopened = session.resume(run.folder)  # a crash before the base stage: the image is gone
    with pytest.raises(RunFailed, match="refine the image again"):
        await given_base_stage(reopened)
    assert not (run.folder / "base.png").exists()
    await session.aclose()


async def test_refining_a_past_runs_base_reuses_its_latent(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    first, _, _ = await refine(session, image=read_image(write_image(tmp_path / "fox.png")))
    past = open_past_run(first.folder)
    second, manifest, _ = await refine(session, prompt=past.manifest["prompt"], past=past)
    base = manifest["stages"]["base"]
    assert base["source"] == "run" and base["from_run"]["folder"] == str(first.folder.resolve())
    assert manifest["seed"] == 2026  # the past run's seed, none being given
    for name in ("base.png", "base_latent.safetensors", "refined.png"):
        # Same latent, prompt and seed: the same refinement, to the byte.
        assert (second.folder / name).read_bytes() == (first.folder / name).read_bytes(), name
    third, _, _ = await refine(session, prompt=PROMPT, past=open_past_run(first.folder), seed=7)
    assert (third.folder / "refined.png").read_bytes() != (first.folder / "refined.png").read_bytes()
    await session.aclose()


async def test_a_past_run_without_a_base_cannot_be_refined(tmp_path, engine):
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT)
    await run.advance()  # the text stages only
    with pytest.raises(StoreError, match="no completed base stage"):
        open_past_run(run.folder)
    with pytest.raises(StoreError):
        open_past_run(tmp_path / "nowhere")
    await session.aclose()


# ---------------------------------------------------------------- seeds (docs/method.md section 6, "Seeds")


@pytest.mark.parametrize("variants", ["full", "all"])
async def test_a_run_folder_reruns_to_the_same_bytes(tmp_path, engine, variants):
    """Every stochastic choice comes from the run's seed: forget the refinements (and, for
    the comparison branch, its base) and resume, and the same images come back."""
    session = Session(offline_settings(tmp_path, str(engine.model)), diffusion=engine)
    run = session.new_run(PROMPT, variants=variants)
    await run.run_all()
    images = sorted(p.name for p in run.folder.glob("*.png"))
    before = {name: (run.folder / name).read_bytes() for name in images}
    again = session.resume(run.folder)
    again.forget("refine")
    if variants == "all":
        again.forget("base_original")
    for name in ("refined.png", "refined_original.png", "base_original.png"):
        (run.folder / name).unlink(missing_ok=True)
    await again.run_all()
    for name, data in before.items():
        assert (run.folder / name).read_bytes() == data, name
    await session.aclose()
