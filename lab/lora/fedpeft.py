"""FedPEFT (Sun et al. 2022, "Exploring Parameter-Efficient Fine-Tuning to Enable Foundation Models in FL").

Spec Part B §B14. FedAvg in which clients fine-tune, and communicate, only a
parameter-efficient subset P of a frozen backbone (`lab.lora.peft.PeftMap`):
`peft_mode` = 'bias' (FedPEFT-Bias: biases + head), 'lora' (adapters: LoRA
factors + head, standing in for FedPEFT-Adapter), 'head' (the classifier
only), or 'full' (every parameter: the full fine-tuning baseline FedPEFT is
compared with). A classifier head is always trained; a language model's
output layer only in 'head' and 'full' (lab.lora.peft). The backbone is
pre-trained on the other part of the data (lab.pretrain, `pretrained`), as
FedPEFT fine-tunes a pre-trained foundation model; `fedavg` with
`pretrained='on'` is full fine-tuning of the same backbone.

Round: the server sends the global P to the sampled clients (downlink 4|P|
bytes each), each trains P with plain SGD for its local steps, uploads it
(uplink 4|P| bytes), and the server averages with data-size weights. Knobs:
`peft_mode`, `lora_rank`, `lora_alpha`, `lr`, `local_steps` / `local_epochs`,
`client_fraction`. The metrics column `trainable` is |P|.
"""
from __future__ import annotations

from lab.knobs import Knob
from lab.lora.peft import PeftFederated


class FedPEFT(PeftFederated):
    name = "fedpeft"
    label = "FedPEFT"
    knobs = {
        "peft_mode": Knob("lora", "what clients train and send (and a classifier head)",
                          choices=("lora", "bias", "head", "full")),
    }
