"""What every config key means: the one home of the meanings, beside the typed `RunSpec` (spec.py).

`conf/` holds names and numbers; each key's meaning is written here once, as `group.key` (a key of
conf/config.yaml itself has no group: `seed`, `export.opset`). The documentation's configuration reference
is generated from this table and conf/ (docs/_ext/transferkit_docs.py), and tests/test_docs_reference.py
fails when a key of conf/ has no meaning here or a meaning names a key conf/ does not have.
`GROUPS` says what each config group is for; a group's options are described by the first comment
of their conf/<group>/<option>.yaml.

Plain data, no imports: any layer may read it.
"""

GROUPS: dict[str, str] = {
    "task": "What is learned: classification or segmentation, and the task's loss and metric options.",
    "model": "The network: the backbone (timm), its weights, the input channels and the new head.",
    "data": "Where the images come from and how they are split, decoded, resized and batched.",
    "augment": "The training augmentation (evaluation is a plain resize), and mixup/cutmix on batches.",
    "finetune": "How much of the pretrained backbone trains: freeze, partial, full, or auto (a race).",
    "optimizer": "The optimizer; each param group's LR is optimizer.lr times its lr_scale (head 1, backbone lower).",
    "scheduler": "The learning-rate schedule, with an optional linear warm-up.",
    "trainer": "Lightning Trainer flags; any other Trainer argument works too as trainer.<flag>=value.",
    "tune": "`tune`: an Optuna hyperparameter search; each trial is a fit run.",
    "serve": "`serve`: an HTTP server (LitServe) with dynamic batching: POST /predict, GET /health, GET /info.",
}

KEYS: dict[str, str] = {
    # -- conf/config.yaml: keys of the root config ------------------------------------------------------
    "seed": "One seed for everything: split, init, augmentation and batch order.",
    "out": "`optimize`: where the optimized data set is written (a folder or s3://bucket/prefix); train on it "
           "with data.root=<out>.",
    "run_dir": "Where the run writes config.yaml, checkpoints/, metrics.csv, results.json; null: "
               "outputs/<date>/<time> under the current directory (a new folder per run).",
    "ckpt_path": "fit: start a new run from this checkpoint's state; test/predict/export/serve: the checkpoint "
                 "to use, a list of them ([a.ckpt,b.ckpt]: an ensemble) or a run directory (a cv run: its folds).",
    "resume": "fit/cv: continue a run in place from its checkpoints/last.ckpt (cv: skip the finished folds): "
              "a run directory, or `last` for the newest fit run under outputs/.",
    "input": "predict (and show-features): an image file or a folder of images.",
    "output": "predict: the CSV path (null: <run_dir>/predictions.csv).",
    "top_k": "predict: how many classes the top_k column lists per image.",
    "tta": "test/predict: test-time augmentation, averaged per model: none | flip (left-right, only for models "
           "trained with flips) | multiscale (x0.875, x1, x1.125 of the input size).",
    "logit_adjust": "fit: subtract log(train class prior) from the logits at evaluation (val, test, predict, "
                    "export), so rare classes are predicted more often (Menon et al. 2021); kept in the checkpoint.",
    "calibration": "temperature | none. fit/cv: fit a temperature on the validation split and report test ECE/NLL "
                   "before and after; predict/export/serve: divide the logits by it (classification only).",
    "export_dtype": "pretrain: dtype of the exported backbone weights (float32 | float16 | bfloat16).",
    "format": "export: the file format (onnx | torchscript | openvino).",
    "export.include_preprocessing": "true: the exported graph takes resized uint8 N x H x W x C pixels and "
                                    "normalises them itself.",
    "export.opset": "The ONNX opset (onnxruntime >= 1.14 runs 18).",
    "export.parity_max_images": "Check the export's parity on at most this many images (null: the whole test "
                                "split or input).",
    "export.quantize": "int8 (format=onnx | openvino): static INT8, calibrated on training images; null: none.",
    "export.calibration_images": "INT8: training images (drawn at random) the activation ranges are calibrated on.",
    "export.max_drop": "INT8: refuse the export when test accuracy drops more than this many points.",
    "export.int8_scope": "INT8: what is quantized. all: everything the quantizer supports (the fastest); branches: the "
                         "residual-branch convolutions only (stem, shortcut convolutions, additions, pooling and head "
                         "stay float32: flips fewer near-ties); auto: all when it keeps the checkpoint's top-1 class on "
                         "export.min_agreement % of the validation images, else branches.",
    "export.min_agreement": "INT8 with export.int8_scope=auto: the top-1 agreement with the checkpoint (percent, on the "
                            "validation split) that scope all must reach to be kept.",
    "checkpoint.monitor": "The validation metric best.ckpt (and finetune=auto's race) selects on: val/acc | "
                          "val/balanced_acc | val/f1 | val/loss; null: val/balanced_acc when the train split is "
                          "long-tailed (largest/smallest class > 10), else val/acc.",
    "checkpoint.every_steps": "e.g. 500: also save checkpoints/mid-epoch.ckpt after every 500th optimizer step; "
                              "a streamed, optimized data.root resumes its epoch exactly from it.",
    "checkpoint.every_minutes": "e.g. 30: also save checkpoints/mid-epoch.ckpt every 30 minutes of training, "
                                "which `fit resume=...` continues from when it is newer than last.ckpt.",
    "early_stopping.patience": "e.g. 5: stop after 5 epochs without improvement of the monitored metric; null: off.",
    "early_stopping.monitor": "The metric early stopping watches; null: the task's own (val/acc, val/miou).",
    "early_stopping.min_delta": "The smallest change of the monitored metric that counts as an improvement.",
    "regularization.l1": "e.g. 1e-5: add l1 * sum|w| over the trainable weights (not biases or norms) to the "
                         "training loss, logged as train/l1; 0: off.",
    "ema.decay": "e.g. 0.999: an exponential moving average of the weights (timm's ModelEmaV3); validation, "
                 "best.ckpt and last.ckpt then hold the averaged weights; null: off.",
    "swa.epoch_start": "Stochastic weight averaging of the trainable parameters from this 0-based epoch (a float "
                       "in (0, 1): a fraction of max_epochs); null: off.",
    "swa.lr": "SWA: the constant head LR from swa.epoch_start on (backbone groups keep their scale); null: keep "
              "the schedule.",
    "advise.max_images": "advise and finetune=auto: the stratified subsample of the training split whose "
                         "features are scored.",
    "advise.k": "advise: the k of the k-NN similarity score.",
    "advise.folds": "advise: cross-validation folds of the k-NN score.",
    "advise.size_threshold": "advise: images per class below which the data set counts as small.",
    "advise.similarity_threshold": "advise: chance-normalised k-NN accuracy at or above which the data set "
                                   "counts as similar to the weights' source.",
    "advise.compare_random": "advise: also score a randomly initialised twin backbone (the LogME gain).",
    "show_augs.samples": "show-augs: rows of the grid (training images, classes taken in turn).",
    "show_augs.variants": "show-augs: augmented draws per image (beside the original).",
    "lr_find.min_lr": "lr-find and optimizer.lr=find: the base (head) LR the range test starts from; param "
                      "groups keep their lr_scale.",
    "lr_find.max_lr": "lr-find: the base LR the range test ends at.",
    "lr_find.num_training": "lr-find: optimizer steps of the sweep (one LR each).",
    "lr_find.mode": "lr-find: how the LR grows between steps: exponential | linear.",
    "lr_find.early_stop_threshold": "lr-find: stop once the smoothed loss exceeds this many times its best "
                                    "(null: never).",
    "summary.layers": "summary: one row per conv/pool/linear/norm layer instead of one per stage.",
    "summary.compare": "summary: add LeNet-5, AlexNet, VGG-16, GoogLeNet and ResNet-50 side by side.",
    "summary.num_classes": "summary: classes of the head row; null: the architecture's default (1000 for ImageNet).",
    "show_features.channels": "show-features: feature maps shown per stage (the most active ones).",
    "audit.folds": "audit: k of the k-fold solved head whose out-of-sample probabilities rank the labels.",
    "audit.neighbours": "audit: nearest images per image (by thumbnail and by feature) checked as near duplicates.",
    "audit.prefilter": "audit: a candidate pair whose 16 x 16 thumbnails differ by more than this "
                       "(1 - correlation) is not verified.",
    "audit.near_threshold": "audit: near duplicate when 1 - correlation of the 32 x 32 inputs, crop and "
                            "brightness undone, is at most this.",
    "audit.outlier_neighbours": "audit: the outlier score is the mean distance to this many nearest images of "
                                "the nearest class.",
    "audit.shown": "audit: rows (with thumbnails) per table in audit.html.",
    "cv": "audit: score the labels with the out-of-fold probabilities of this cv run directory (null: a k-fold "
          "solved head).",
    "report.enabled": "fit/test: write report.html and report/ into the run directory.",
    "report.top_losses": "fit/test: images in report/top_losses.png.",
    "run": "report: the run directory whose report.html to rebuild.",
    "debug": "Show full tracebacks and everything the libraries print.",
    # -- task ------------------------------------------------------------------------------------------
    "task.kind": "classification | multilabel | segmentation (choose with task=...; a manifest of label sets makes "
                 "multilabel by itself; segmentation recipes: fcn8s, fcn16s, fcn32s).",
    "task.pos_weight": "multilabel: BCE's per-class positive weights; auto = negatives/positives of the train split "
                       "(capped at 50), none = plain BCE.",
    "task.label_smoothing": "classification: label smoothing of the cross-entropy (0: off).",
    "task.top_k": "classification: also log top-k accuracy (acc_top<k>) when 1 < k < the number of classes.",
    "task.ignore_index": "segmentation: mask pixels with this id count in no loss or metric (data.ignore_index).",
    "task.dice_weight": "segmentation: > 0 adds dice_weight x soft-Dice loss to the cross-entropy.",
    "task.class_weights": "segmentation: one cross-entropy weight per class, e.g. [0.2, 1, 1, 1, 1]; null: equal.",
    "task.grid_samples": "segmentation: validation samples drawn in <run_dir>/seg_grid.png (0: none).",
    # -- model -----------------------------------------------------------------------------------------
    "model.backbone": "auto (the house backbone for embedded data, resnet50 for your folder) | any timm "
                      "architecture name.",
    "model.weights": "auto (the house backbone for embedded data, else timm's weights) | hub (timm's, from the "
                     "Hugging Face cache, else downloaded) | none (random init) | a house backbone name (charnet) "
                     "| /path/to/weights.safetensors|.pth|.ckpt.",
    "model.in_chans": "Input channels; auto: the weights' own (charnet 1 grey, ImageNet 3); pretrained first "
                      "convs are adapted.",
    "model.cache_dir": "The Hugging Face hub cache to read weights from; null: huggingface_hub's default.",
    "model.dropout": "Dropout before the classifier.",
    "model.spatial_dropout": "Channel-wise Dropout2d on the backbone's last feature map, before pooling "
                             "(classification, CNN backbones; turns the feature cache off).",
    "model.hidden_dim": "e.g. 256: a Linear-ReLU-Dropout-Linear head instead of one Linear; null: one Linear.",
    "model.init": "Head init: kaiming (He, for ReLU) | xavier (Glorot).",
    "model.drop_rate": "timm's dropout inside the backbone's own head path.",
    "model.drop_path_rate": "Stochastic depth (ResNets, ConvNeXt, ViT).",
    "model.channels_last": "GPU speed: NHWC weights and inputs for tensor cores.",
    "model.compile": "true: torch.compile the backbone (pays a compile at the start of the run).",
    "model.compile_mode": "torch.compile mode: null (default) | reduce-overhead | max-autotune | "
                          "max-autotune-no-cudagraphs.",
    # -- data ------------------------------------------------------------------------------------------
    "data.root": "Your image folder (<root>/<class>/* or <root>/{train,val,test}/<class>/*; segmentation: "
                 "<root>/images/* + <root>/masks/*); null: the embedded data set.",
    "data.embedded": "The embedded data set when data.root is null: digits | fonts | synthdigits | shapes | "
                     "synthetic (random images on the device: speed benchmarks); segmentation: scenes.",
    "data.image_size": "Input size in pixels; auto: the weights' native size (charnet 32, ImageNet models 224; "
                       "embedded scenes 48).",
    "data.mean": "Per-channel normalisation mean; auto: the weights' pretrained config.",
    "data.std": "Per-channel normalisation std; auto: the weights' pretrained config.",
    "data.interpolation": "Resize filter: auto (the weights' own) | bilinear | bicubic | nearest | area.",
    "data.batch_size": "Images per training and evaluation batch (per device).",
    "data.drop_last": "The last, shorter training batch: auto drops it only when it holds one image (batch norm "
                      "cannot train on one) | true | false.",
    "data.num_workers": "DataLoader processes; auto: 2 on a CPU run, on a GPU one per usable core per device, "
                        "less one.",
    "data.val_fraction": "The validation share when the folder has no val/ split.",
    "data.test_fraction": "The test share when the folder has no test/ split.",
    "data.max_bad_fraction": "Unreadable files above this fraction stop the run before training (below it they "
                             "are skipped and listed).",
    "data.manifest": "A CSV with path,label[,split] columns instead of class folders; its paths are relative "
                     "to data.root (null: the manifest's folder).",
    "data.balance": "Class imbalance: auto (weights when train's largest/smallest class > 10, else none) | none | "
                    "weights (class-weighted loss) | sampler.",
    "data.fold": "k-fold: which fold validates (0..num_folds-1).",
    "data.num_folds": "k-fold: the number of stratified folds (null: no k-fold split).",
    "data.cache": "Keep decoded, resized images in memory so epochs after the first skip decoding.",
    "data.cache_dir": "data.cache: keep the decoded images as files under this folder instead of in memory.",
    "data.decode": "Where folder images are decoded and augmented: cpu (DataLoader workers) | gpu (JPEGs with "
                   "nvJPEG on the training device, augment none|light).",
    "data.background": "The RGB colour transparent images are composited on.",
    "data.embedded_length": "fonts, synthdigits, shapes, scenes: generated training images.",
    "data.train_per_class": "e.g. 10: keep a fixed, seeded draw of N training images per class (val/test "
                            "untouched); null: all.",
    "data.synthetic_classes": "data.embedded=synthetic: the number of classes of the random labels.",
    "data.draw_seed": "The seed of data.train_per_class's draw, independent of `seed`.",
    "data.storage_options": "data.root=s3://, gs://, azure://: extra keyword arguments of the store's client (fsspec, "
                            "e.g. {endpoint_url: ...}); credentials otherwise come from the standard environment.",
    "data.stream_cache": "An optimized data.root (`optimize`): the local folder its chunks are cached in; null: a temp folder.",
    "data.stream_cache_size": "The chunk cache's size bound (e.g. 10GB); least recently used chunks are evicted beyond it.",
    "data.exclude": "A CSV with a path column (relative to data.root): these files are left out of every split.",
    "data.relabel": "A CSV with path,label columns: these files get that class instead of their folder's.",
    "data.num_classes": "segmentation with data.root: the number of classes, background included (or give "
                        "class_names).",
    "data.class_names": "segmentation: e.g. [background, road, car]; mask id i is class_names[i].",
    "data.ignore_index": "segmentation: the mask value no loss or metric counts (e.g. object borders).",
    "data.mask_palette": "segmentation: RGB colour masks, {'r,g,b': class_id, ...}, e.g. {'0,0,0': 0, "
                         "'128,0,0': 1}.",
    # -- augment ---------------------------------------------------------------------------------------
    "augment.name": "The augmentation recipe: none | light | strong | cifar (choose with augment=...).",
    "augment.mixup_alpha": "> 0: mixup on training batches (Beta alpha, e.g. 0.2); needs an even batch size.",
    "augment.cutmix_alpha": "> 0: cutmix on training batches (Beta alpha, e.g. 1.0); with mixup too, each batch "
                            "uses one of the two.",
    "augment.flips": "Random flips; false for digits and text, where a flip changes the class.",
    # -- finetune --------------------------------------------------------------------------------------
    "finetune.strategy": "freeze | partial | full | auto (choose with finetune=...).",
    "finetune.trainable_stages": "partial: how many of the backbone's top stages (timm group_matcher) train.",
    "finetune.backbone_lr_scale": "partial/full: the backbone's LR is the head's times this.",
    "finetune.layer_decay": "full: e.g. 0.75: each lower timm group gets 0.75x the LR of the one above; null: off.",
    "finetune.unfreeze_at_epoch": "e.g. 2: train the head alone for 2 epochs, then unfreeze; null: from the start.",
    "finetune.cache_features": "null: train the head on cached backbone features where that is exact; false: "
                               "never; true: always (an error where invalid).",
    "finetune.head_solver": "freeze: lbfgs solves the head once (L2 chosen by cross-validation) instead of SGD "
                            "epochs; sgd: trainer.max_epochs epochs.",
    "finetune.lpft": "partial/full: true solves the head on the frozen features first (LP-FT).",
    "finetune.combine": "auto: the run's model after the race: ensemble averages every candidate that finished "
                        "(one forward pass per member at inference); best keeps the winner alone.",
    # -- optimizer -------------------------------------------------------------------------------------
    "optimizer.name": "adamw | adam | sgd | rmsprop (choose with optimizer=...).",
    "optimizer.lr": "The head's learning rate (backbone groups: times their scale); find: Lightning's LR range "
                    "test picks it.",
    "optimizer.weight_decay": "Weight decay (decoupled for adamw, L2 for the others); biases and norms get none.",
    "optimizer.momentum": "sgd and rmsprop: momentum (unused by adam and adamw).",
    "optimizer.nesterov": "sgd: Nesterov momentum.",
    "optimizer.betas": "adam/adamw: the moving-average coefficients.",
    "optimizer.eps": "adam/adamw/rmsprop: the term added to the denominator.",
    "optimizer.fused": "auto: a one-kernel update where torch has it (CPU and CUDA) | true | false.",
    # -- scheduler -------------------------------------------------------------------------------------
    "scheduler.name": "constant | cosine | exponential | lenet | multistep | onecycle | plateau | sgdr | step "
                      "(choose with scheduler=...).",
    "scheduler.interval": "step: the LR changes every optimizer step (at t = step/steps_per_epoch); epoch: once "
                          "per epoch.",
    "scheduler.warmup_epochs": "Epochs of linear warm-up before the schedule (0: none).",
    "scheduler.warmup_start_factor": "The warm-up starts at lr times this.",
    "scheduler.min_lr_scale": "cosine, sgdr, plateau: the lowest LR, as a fraction of lr.",
    "scheduler.gamma": "step, multistep, exponential, plateau: the factor the LR is multiplied by.",
    "scheduler.step_size": "step: epochs between two decays.",
    "scheduler.milestones": "multistep, lenet: the epochs at which the LR changes.",
    "scheduler.factors": "lenet: the LR factor before the first milestone and after each one.",
    "scheduler.pct_start": "onecycle: the fraction of the run spent raising the LR.",
    "scheduler.div_factor": "onecycle: the LR starts at lr / div_factor.",
    "scheduler.final_div_factor": "onecycle: the LR ends at lr / (div_factor * final_div_factor).",
    "scheduler.restart_epochs": "sgdr: the length of the first cosine period in epochs.",
    "scheduler.restart_mult": "sgdr: each period is this many times the previous one.",
    "scheduler.monitor": "plateau: the metric watched.",
    "scheduler.mode": "plateau: min (lower is better) | max.",
    "scheduler.patience": "plateau: epochs without improvement before the LR drops.",
    # -- trainer (Lightning Trainer flags) -------------------------------------------------------------
    "trainer.accelerator": "auto | cpu | gpu | ...: the device kind.",
    "trainer.devices": "auto | a number | a list: the devices per node.",
    "trainer.strategy": "auto | ddp | ...: how training is distributed.",
    "trainer.num_nodes": "Machines (nodes) in a distributed run.",
    "trainer.precision": "32-true | 16-mixed | bf16-mixed | ...",
    "trainer.max_epochs": "Epochs to train.",
    "trainer.min_epochs": "Train at least this many epochs, even when early stopping would stop sooner.",
    "trainer.max_steps": "Stop after this many optimizer steps (-1: no limit).",
    "trainer.max_time": "Stop after this wall time (DD:HH:MM:SS); null: no limit.",
    "trainer.limit_train_batches": "Train on this many batches (an int) or this fraction (a float) per epoch.",
    "trainer.limit_val_batches": "Validate on this many batches or this fraction.",
    "trainer.limit_test_batches": "Test on this many batches or this fraction.",
    "trainer.val_check_interval": "Validate this often within an epoch (a fraction, or every N batches).",
    "trainer.check_val_every_n_epoch": "Validate every N epochs.",
    "trainer.log_every_n_steps": "Log training metrics every N steps.",
    "trainer.accumulate_grad_batches": "Sum the gradients of N batches before each optimizer step.",
    "trainer.gradient_clip_val": "Clip the gradient norm to this value; null: no clipping.",
    "trainer.deterministic": "Use deterministic algorithms only (slower, reproducible).",
    "trainer.benchmark": "cuDNN benchmark; null: true unless deterministic (one input size per run).",
    "trainer.fast_dev_run": "true (or N): run one (or N) batches of train/val/test as a smoke test.",
    "trainer.enable_progress_bar": "null: a bar in a terminal or notebook, one line per epoch in a pipe or log.",
    "trainer.enable_model_summary": "Print Lightning's model summary at the start.",
    "trainer.num_sanity_val_steps": "Validation batches run before training as a check.",
    "trainer.sync_batchnorm": "Synchronise BatchNorm statistics across devices (DDP).",
    # -- tune ------------------------------------------------------------------------------------------
    "tune.n_trials": "Finished (complete + pruned) trials the study should hold; resume adds the rest.",
    "tune.timeout": "Seconds: start no new trial after this; null: no limit.",
    "tune.metric": "The metric each trial's best epoch is scored on; null: the task's monitor (val/acc, val/miou).",
    "tune.direction": "minimize | maximize; null: the task's own (maximize val/acc).",
    "tune.sampler": "tpe | random.",
    "tune.seed": "The sampler's seed; null: the run's seed.",
    "tune.pruner": "median: stop a trial whose val metric is below the median of earlier ones | none.",
    "tune.startup_trials": "median pruner: finish this many trials before pruning any.",
    "tune.warmup_epochs": "median pruner: never prune a trial before this many validated epochs.",
    "tune.storage": "An Optuna storage URL shared by several runs; null: sqlite:///<tune dir>/study.db.",
    "tune.study_name": "The Optuna study's name in the storage.",
    "tune.space": "The search space, nested like the config: a node with `choices` is categorical, one with "
                  "low/high a range (`log: true`: log scale; optional `step`).",
    # -- serve -----------------------------------------------------------------------------------------
    "serve.host": "127.0.0.1 (this machine only) | 0.0.0.0 (every interface, e.g. in a container) | ::",
    "serve.port": "The TCP port (1024..65535).",
    "serve.max_batch_size": "Dynamic batching: up to this many requests per forward pass (1: no batching).",
    "serve.batch_timeout": "Seconds a batch waits to fill before it runs anyway.",
    "serve.workers_per_device": "Inference processes per device (each loads the model once).",
    "serve.torch_threads": "CPU threads of each inference process (null: torch's default); 1 helps on busy "
                           "machines.",
    "serve.accelerator": "auto (a GPU when there is one) | cpu | cuda.",
    "serve.timeout": "Seconds a request may wait in the queue before it gets 504.",
    "serve.max_bytes": "A request body over this many bytes gets 413.",
    "serve.max_pixels": "An image over this many pixels (a decompression bomb) gets 413.",
    "serve.log_level": "uvicorn's log level: info logs each request; warning only problems.",
}
