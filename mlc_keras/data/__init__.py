"""Data, in the order it flows: manifest (CSV -> records) -> sources
(screening, splits, tf.data views of records/TFRecords/TFDS) -> pipeline
(decode, augment, batch, sample weights). imageio holds the decoding every
stage and the serving graph share; tfrecords writes and reads shards; demo
generates the embedded demo set."""
