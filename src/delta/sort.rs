//! `sorted(items, key=..., reverse=...)` making the same comparisons, in the
//! same order, as CPython 3.11's list sort for short lists. Which pairs get
//! compared decides whether an incomparable pair raises, and deepdiff's
//! behaviour hangs on that.

use super::pyops::PyResult;

/// CPython sorts runs shorter than this with binary insertion alone.
const MIN_MERGE: usize = 64;

pub fn py_sorted<T: Clone>(
    mut items: Vec<T>,
    reverse: bool,
    mut lt: impl FnMut(&T, &T) -> PyResult<bool>,
) -> PyResult<Vec<T>> {
    // CPython keeps reverse sorts stable by reversing before and after.
    if reverse {
        items.reverse();
    }
    if items.len() < MIN_MERGE {
        small_sort(&mut items, &mut lt)?;
    } else {
        merge_sort(&mut items, &mut lt)?;
    }
    if reverse {
        items.reverse();
    }
    Ok(items)
}

fn small_sort<T: Clone>(a: &mut [T], lt: &mut impl FnMut(&T, &T) -> PyResult<bool>) -> PyResult<()> {
    let n = a.len();
    if n < 2 {
        return Ok(());
    }
    // count_run
    let mut run = 2;
    if lt(&a[1], &a[0])? {
        while run < n && lt(&a[run], &a[run - 1])? {
            run += 1;
        }
        a[..run].reverse();
    } else {
        while run < n && !lt(&a[run], &a[run - 1])? {
            run += 1;
        }
    }
    // binarysort from the end of the run
    for start in run..n {
        let pivot = a[start].clone();
        let (mut l, mut r) = (0, start);
        while l < r {
            let p = l + ((r - l) >> 1);
            if lt(&pivot, &a[p])? {
                r = p;
            } else {
                l = p + 1;
            }
        }
        a[l..=start].rotate_right(1);
    }
    Ok(())
}

/// A stable merge sort for long lists; it compares different pairs than
/// CPython's timsort, which only matters when some pair is incomparable.
fn merge_sort<T: Clone>(a: &mut Vec<T>, lt: &mut impl FnMut(&T, &T) -> PyResult<bool>) -> PyResult<()> {
    if a.len() < MIN_MERGE {
        return small_sort(a, lt);
    }
    let mid = a.len() / 2;
    let mut right = a.split_off(mid);
    merge_sort(a, lt)?;
    merge_sort(&mut right, lt)?;
    let left = std::mem::take(a);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if lt(&right[j], &left[i])? {
            a.push(right[j].clone());
            j += 1;
        } else {
            a.push(left[i].clone());
            i += 1;
        }
    }
    a.extend_from_slice(&left[i..]);
    a.extend_from_slice(&right[j..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_stably_both_ways() {
        let v: Vec<(i32, char)> = vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd'), (1, 'e')];
        let asc = py_sorted(v.clone(), false, |x, y| Ok(x.0 < y.0)).unwrap();
        assert_eq!(asc, vec![(1, 'b'), (1, 'e'), (2, 'd'), (3, 'a'), (3, 'c')]);
        let desc = py_sorted(v, true, |x, y| Ok(x.0 < y.0)).unwrap();
        assert_eq!(desc, vec![(3, 'a'), (3, 'c'), (2, 'd'), (1, 'b'), (1, 'e')]);
        let long: Vec<i32> = (0..500).map(|i| (i * 7919) % 500).collect();
        let sorted = py_sorted(long, false, |x, y| Ok(x < y)).unwrap();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
    }
}
