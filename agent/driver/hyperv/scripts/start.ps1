    $vm = Get-VM -Id $p.id
    Start-VM -VM $vm
    Out-FerryResult @{ vms = @(Get-FerryVMInfo (Get-VM -Id $p.id)) }
