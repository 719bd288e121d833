"""Where people already train: nnU-Net v2 trainers (:mod:`.nnunet`, extra ``[nnunet]``) and the Auto3DSeg
segresnet override (:mod:`.auto3dseg`). Each framework is imported only inside its own module; nothing in
:mod:`monai_gdl.losses` or :mod:`monai_gdl.kernels` imports this package."""
