import itertools

import numpy as np

from maskwatch.vision.track import IouTracker, Track, Vote


def moving(start, step, n):
    x, y = start
    return [(x + i * step, y, x + i * step + 40, y + 40) for i in range(n)]


def test_stable_ids_for_moving_faces():
    t = IouTracker(ids=itertools.count(1))
    a, b = moving((0, 0), 5, 30), moving((300, 100), -5, 30)
    ids = [[tr.id for tr in t.update([a[i], b[i]] if i % 2 else [b[i], a[i]])] for i in range(30)]
    assert all(sorted(x) == [1, 2] for x in ids)
    ids_of_a = {x[0] if i % 2 else x[1] for i, x in enumerate(ids)}  # the result follows the input order
    assert ids_of_a == {2}


def test_fast_motion_matches_by_centre_distance():
    t = IouTracker()
    first = t.update([(0, 0, 40, 40)])[0].id
    assert t.update([(25, 5, 65, 45)])[0].id == first  # IoU ~0.2 < 0.3, centre moved 0.6 box sizes
    assert t.update([(200, 5, 240, 45)])[0].id != first  # far away: a new person


def test_missed_frames_and_expiry():
    t = IouTracker(max_missed=3)
    tid = t.update([(0, 0, 40, 40)])[0].id
    for _ in range(3):
        t.update([])
    assert t.update([(1, 1, 41, 41)])[0].id == tid  # survived 3 missed frames
    for _ in range(4):
        t.update([])
    new = t.update([(1, 1, 41, 41)])[0]
    assert new.id != tid and new.id == tid + 1  # ids are never reused
    assert len(t.tracks) == 1


def test_one_detection_one_track():
    t = IouTracker()
    t.update([(0, 0, 40, 40)])
    ids = [tr.id for tr in t.update([(0, 0, 40, 40), (2, 2, 42, 42)])]  # duplicate boxes
    assert len(set(ids)) == 2
    t.reset()
    assert t.update([(0, 0, 10, 10)])[0].id not in ids  # a reset never reuses ids


def test_track_ids_are_unique_across_trackers_of_the_process():
    a, b = IouTracker(), IouTracker()
    ids = [t.update([(0, 0, 40, 40)])[0].id for t in (a, b)]
    a.reset()
    ids.append(a.update([(0, 0, 40, 40)])[0].id)
    assert len(set(ids)) == 3


def test_renew_makes_a_new_person_at_the_same_place():
    t = IouTracker()
    tr = t.update([(0, 0, 40, 40)])[0]
    tr.vote("mask", [0.9, 0.1])
    tr.mark_classified()
    old = tr.id
    t.renew(tr)
    assert tr.id != old and not tr.votes and tr.classified_box is None
    assert t.update([(1, 1, 41, 41)])[0] is tr  # it keeps following the box


def test_vote_smooths_single_outliers_and_follows_real_change():
    v = Vote()
    for _ in range(4):
        v.add([0.95, 0.05])
    v.add([0.1, 0.9])  # one wrong frame
    assert np.argmax(v.probs) == 0
    for _ in range(3):
        v.add([0.05, 0.95])  # the person really changed (put on / took off a mask)
    assert np.argmax(v.probs) == 1 and v.count == 8
    assert np.isclose(v.probs.sum(), 1.0)


def test_vote_weighs_confident_predictions_more():
    v = Vote()
    v.add([0.98, 0.02])
    v.add([0.45, 0.55])  # near chance: little weight
    assert v.probs[0] > 0.8
    low = Vote()
    low.add([0.98, 0.02], quality=0.1)
    low.add([0.02, 0.98], quality=1.0)
    assert low.probs[1] > 0.8


def test_needs_classification_rules():
    tr = Track(id=1, box=(0, 0, 40, 40))
    assert tr.needs_classification(10)  # never classified
    tr.mark_classified()
    tr.vote("mask", [0.9, 0.1])
    assert not tr.needs_classification(10)
    tr.since_classified = 10
    assert tr.needs_classification(10)  # k frames passed
    tr.since_classified = 1
    tr.box = (30, 0, 70, 40)
    assert tr.needs_classification(10)  # moved a lot
    tr.box = (0, 0, 52, 52)
    assert tr.needs_classification(10)  # grew a lot
    tr.box = (1, 1, 41, 41)
    assert not tr.needs_classification(10)
    tr.since_classified = 2
    assert tr.needs_classification(10, uncertain=True)  # undecided: more often...
    for _ in range(6):
        tr.vote("mask", [0.5, 0.5])
    assert not tr.needs_classification(10, uncertain=True)  # ...but not forever


def test_track_velocity():
    t = IouTracker()
    for box in moving((0, 0), 5, 6):
        tr = t.update([box])[0]
    assert np.allclose(tr.velocity, (5.0, 0.0))
    t.update([])  # one missed frame, then the face is seen 10 px further: still 5 px per frame
    assert np.allclose(t.update([(35, 0, 75, 40)])[0].velocity, (5.0, 0.0))
