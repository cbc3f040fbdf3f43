"""The six networks of the learned route, one per file, each with its settings and its loss.

===========  ===================  ===========================================================================
name         module               holds
===========  ===================  ===========================================================================
patch        :mod:`.patch`        PatchRecoveryNet, PatchRecoveryConfig, patch_loss_fn
stitch       :mod:`.stitch`       PhaseStitchingNet, PhaseStitchingConfig, place_patches, stitch_loss_fn
end2end      :mod:`.end2end`      End2End (the two chained), end2end_loss_fn, FreezePatchNet
autoencoder  :mod:`.autoencoder`  Autoencoder (its loss: compute_loss), AutoencoderModelConfig / LossConfig
phaseformer  :mod:`.phaseformer`  Phaseformer, PhaseformerConfig, PhaseformerModelConfig / LossConfig,
                                  PhaseformerLoss
restorer     :mod:`.restorer`     Restorer (U-Net or Phaseformer body), RestorerConfig, offset_free_loss
===========  ===================  ===========================================================================

Run configs: :mod:`..config`; how each is trained: :mod:`..training` (``route``, ``autoencoder``,
``phaseformer``); by name: :mod:`..registry`; applied: :mod:`..apply`. Nothing is imported here, so
naming one network does not load the others' dependencies.
"""
