"""CompVis LDM for CelebA-HQ 256 (``CompVis/ldm-celebahq-256``, Rombach et al. 2022): the scale we benchmark.

Sources, read through the code index (no download):
- the original training config ``configs/latent-diffusion/celebahq-ldm-vq-4.yaml`` of CompVis/latent-diffusion
  (stored copy: CompVis/stable-diffusion@171cf29f): UNetModel ``model_channels 224``, ``channel_mult
  [1, 2, 3, 4]``, ``num_res_blocks 2``, ``attention_resolutions [8, 4, 2]`` (downsampling factors, i.e.
  attention at latent sizes 32, 16, 8), ``num_head_channels 32``, 3x64x64 latents; first stage VQ f4:
  ``ch 128``, ``ch_mult [1, 2, 4]``, ``num_res_blocks 2``, ``z_channels 3``, ``n_embed 8192``;
  ``linear_start 0.0015``, ``linear_end 0.0195``, 1000 timesteps.
- diffusers' port of that checkpoint (the LDM defaults of ``UNetUnconditionalModel`` in early diffusers,
  which became the hub's ``unet/config.json``): ``block_out_channels (224, 448, 672, 896)``, down blocks
  ``DownBlock2D, AttnDownBlock2D x3``, up blocks ``AttnUpBlock2D x3, UpBlock2D``, ``resnet_eps 1e-5``,
  ``flip_sin_to_cos True``, ``freq_shift 0``, head channels 32.
- LDM's "linear" schedule is linear in sqrt(beta), which diffusers calls ``scaled_linear``.

The dicts are diffusers ``config.json`` keys for ``UNet2DModel``, ``VQModel`` and ``DDIMScheduler``.
"""

UNET = {
    "sample_size": 64,  # 3x64x64 latents: the VQ f4 autoencoder of 256x256 RGB
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],  # model_channels 224 x channel_mult [1, 2, 3, 4]
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "act_fn": "silu",
    "attention_head_dim": 32,  # num_head_channels: heads = channels / 32
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
}

VQVAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [128, 256, 512],  # ch 128 x ch_mult [1, 2, 4]: two 2x downsamplings (f4)
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 3,  # z_channels = embed_dim = 3
    "sample_size": 256,
    "num_vq_embeddings": 8192,  # n_embed
    "norm_num_groups": 32,
}

SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
}

IMAGE_SIZE = 256
