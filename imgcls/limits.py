"""Bounds shared by the flags and by what is read back from disk (a cache's recorded storage size): one
place, so that a value a flag would refuse is refused, or treated as damaged, wherever it comes from."""

MIN_SIDE = 8  # pixels: below this the backbones' stride-32 stages have nothing left
# Upper bounds that keep a typo from becoming an allocation of hundreds of GB: an input side beyond 4096
# pixels, a batch beyond 4096 images (ConvNeXt-Base at 224 needs ~40 GB of activations for 4096 in training).
MAX_SIDE = 4096
MAX_BATCH = 4096
MAX_SEED = 2**32 - 1  # numpy's legacy seeding and many tools accept at most 32 bits
# --find-lr: updates of the range test. fastai uses 100; 10,000 is far past any use and its grids and
# loss records stay small.
MAX_FIND_LR = 10_000
# The decision tau (softmax(log p - tau * log prior)), wherever it is given: train.py --decision-tau, predict.py
# and export.py --decision-tau, imgcls.load(decision_tau=). 'auto' searches -1..1; beyond +-10 the prior
# term swamps any model's evidence.
DECISION_TAU_RANGE = (-10, 10)
