"""Sample quality of a bundle, judged by small classifiers that ship with the package.

FID needs Inception weights we cannot download, so each data set the package knows (evaluate/judged.py: the
MNIST digits, the emoji groups) has its own judge, a small CNN trained on a fixed split of it
(``latent_ddpm/data/digit_classifier.onnx``, ``emoji_classifier.onnx``). It gives two figures: conditional
accuracy (does the model draw the class it was asked for?) and a Fréchet distance in the judge's feature
space (do the samples look like real images, in their variety?); evaluate/memorisation.py adds whether they
copy training images. Evaluation runs on ONNX Runtime; only training a judge needs torch.
"""
