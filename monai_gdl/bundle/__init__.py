"""Everything the bundle configs (``configs/*.json``) import: the network (:mod:`.network`), the
loading transforms (:mod:`.transforms`), datasets in MSD layout (:mod:`.datasets`), the ignite
handlers for checkpoints, epoch summaries and evaluation (:mod:`.handlers`) and the training-curve
plot (:mod:`.report`). The configs are run on their own by MONAI's CLI, and MONAI resolves
``%file`` macros relative to the working directory, so pieces both the training and the inference
configs build live here.
"""
