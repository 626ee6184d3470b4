"""The shared textual-inversion machinery of papers 48, 14 and 35."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.generative import personalize as P
from priorlab.generative.diffusion import prompt_tokens, tiny_unet


def test_placeholder_states_equal_the_real_word_and_carry_gradients():
    nine = P.word_embedding("nine")
    states, where = P.placeholder_states(["a *", "a thick *"], nine)
    expected, _ = prompt_tokens(["a nine", "a thick nine"])
    assert torch.allclose(states, expected, atol=1e-5)
    assert where.tolist() == [2, 3]  # [CLS] a * / [CLS] a thick *
    embedding = nine.clone().requires_grad_(True)
    P.placeholder_states(["a *"], embedding)[0].sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_placeholder_states_rejects_bad_prompts_and_shapes():
    e = P.word_embedding("digit")
    with pytest.raises(PriorlabError, match="exactly once"):
        P.placeholder_states(["a nine"], e)
    with pytest.raises(PriorlabError, match="exactly once"):
        P.placeholder_states(["a * *"], e)
    with pytest.raises(PriorlabError, match="embedding must be"):
        P.placeholder_states(["a *", "a *"], torch.zeros(3, 384))
    with pytest.raises(PriorlabError, match="word pieces"):
        P.word_embedding("zzzqx")


def test_textual_inversion_learns_only_the_embedding():
    unet = tiny_unet(channels=(8, 16), head_dim=4, seed=0)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    images = P.concept_images(9, 4, seed=0)
    calls, after = [], []
    embedding, losses = P.textual_inversion(unet, images, steps=3, batch_size=2, lr=0.05,
                                            extra_loss=lambda e, step: calls.append(step) or 0 * e.sum(),
                                            after_step=lambda e, step: after.append(step))
    assert len(losses) == 3 and calls == [0, 1, 2] and after == [0, 1, 2]
    assert not torch.allclose(embedding, P.word_embedding("digit"))
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert all(p.requires_grad for p in unet.parameters())  # frozen only inside


def test_concept_median_is_the_real_class_median():
    from priorlab.generative.diffusion import class_medians
    from priorlab.generative.gan import digit_images
    x, y = digit_images(8, "train")
    assert P.concept_median(9) == pytest.approx(float(class_medians(x, y)[9]))


def test_concept_images_and_scores():
    from priorlab.generative.gan import digit_images
    x, y = digit_images(8, "train")
    images = P.concept_images(9, 5, seed=1)
    assert images.shape == (5, 1, 8, 8)
    assert all(any(torch.equal(im, other) for other in x[y == 9]) for im in images)
    with pytest.raises(PriorlabError, match="asked for"):
        P.concept_images(9, 10_000, seed=0)

    class Always(torch.nn.Module):  # calls everything class 9
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 9), 10).float()

    thick, thin = torch.full((4, 1, 8, 8), 0.8), torch.full((4, 1, 8, 8), 0.1)
    scores = P.concept_scores(Always(), thin, thick, thin, 9, median=0.5)
    assert scores == {"identity": 1.0, "composed_identity": 1.0, "editability": 1.0}
    assert P.concept_scores(Always(), thin, thin, thin, 3, median=0.5)["editability"] == 0.0


def test_held_out_classes_are_validated():
    from priorlab.generative.diffusion import pretrained_diffusion
    with pytest.raises(PriorlabError, match="held_out"):
        pretrained_diffusion(held_out=(10,), cache=False)
    with pytest.raises(PriorlabError, match="held_out"):
        pretrained_diffusion(held_out=tuple(range(10)), cache=False)
