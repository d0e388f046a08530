"""Sample quality of a bundle, judged by a small digit classifier that ships with the package.

FID needs Inception weights we cannot download, so the judge is our own CNN trained on the shipped MNIST
digits (``latent_ddpm/data/digit_classifier.onnx``). It gives two figures: conditional accuracy (does the
model draw the digit it was asked for?) and a Fréchet distance in the classifier's feature space (do the
samples look like real digits, in their variety?). Evaluation runs on ONNX Runtime; only training the
classifier needs torch.
"""
