"""Per-modality decoding into model inputs, the same in the nodes and in training: depth, events
(clouds, images, EVT 3.0 packets), LiDAR projection, the model-input builder (`preprocess`),
inputs built on arrival (`prepared`) and the rig's geometry (`sensor_geometry`)."""
