"""The built-in denoisers (``register_denoisers``): factories ``factory(**config) -> torch.nn.Module``."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_denoisers(register):
    from art_some.models import diffusion

    register("diffusion", diffusion._diffusion, description="one-shot DDPM denoising with a local diffusers UNet")
    register("tiny_diffusion", diffusion._tiny_diffusion,
             description="DDPM denoiser on a small random UNet (tests, demos)")
    register("identity", diffusion.IdentityDenoiser, description="no denoising (plain Gaussian smoothing)")
    register("adm", diffusion._adm,
             description="one-shot denoising with an OpenAI ADM checkpoint (improved-/guided-diffusion layout)")
    register("tiny_adm", diffusion._tiny_adm, description="ADM denoiser on a small random UNet (tests, demos)")
